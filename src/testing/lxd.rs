//! `MemLxd`: an in-memory LXD behind the `LxdApi` seam, for unit tests.
//!
//! It is a test double that answers as LXD 5.0 does for the calls the controller makes:
//! the same refusals (404, 412, "in use", "already exists", the undeletable `default`
//! profile) with LXD's own texts, an ETag per object, `used_by` URLs, and one lifecycle
//! event per change. On top of that it counts requests, injects faults (errors, latency,
//! hangs, an unreachable server) and lets a test play the operator who edits LXD by hand.
//!
//! It is not LXD: no networking, no HTTP, no JSON, no operations, no projects beyond the
//! one it is built for, no validation of config keys or devices. ETags are counters, not
//! content hashes, so every write changes them even when nothing changed. Names are used
//! in request paths as given (the real client percent-encodes them).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::lxd::{
    EventNotice, Instance, LifecycleAction, LifecycleEvent, LxdApi, LxdError, Profile,
    ProfileContent, ServerInfo,
};

/// The project a `MemLxd::new()` serves.
pub const DEFAULT_PROJECT: &str = "test";

/// The HTTP methods the client uses; anything else given to a fault helper is a typo in
/// a test, which would otherwise silently inject nothing.
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// One call that reached the double, as the real client would have sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: &'static str,
    /// Path and query, without the `?project=` the real client adds to everything.
    pub path: String,
}

impl Request {
    pub fn new(method: &'static str, path: impl Into<String>) -> Request {
        Request {
            method,
            path: path.into(),
        }
    }

    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }
}

type MakeError = Arc<dyn Fn() -> LxdError + Send + Sync>;

/// An in-memory LXD serving one project. Clones share one server.
#[derive(Clone)]
pub struct MemLxd {
    state: Arc<Mutex<State>>,
}

struct State {
    project: String,
    instances: BTreeMap<String, MemInstance>,
    profiles: BTreeMap<String, MemProfile>,
    /// The source of ETags: bumped on every write, so no two versions share one.
    etag_counter: u64,
    requests: Vec<Request>,
    /// Whether each call is kept in `requests`; the counts are kept either way.
    log_requests: bool,
    /// Calls per method and kind of path (`GET /1.0/instances/*`) since the start or
    /// the last `clear_requests`.
    counts: BTreeMap<String, usize>,
    /// Time spent inside the double with its lock held (a bench subtracts it: the
    /// controller's cost is what it measures).
    busy: Duration,
    writes_succeeded: usize,
    /// Checked in order; the first rule for a method answers.
    rules: Vec<FailRule>,
    delays: HashMap<&'static str, Duration>,
    hung: HashSet<&'static str>,
    unreachable: bool,
    subscribers: Vec<UnboundedSender<EventNotice>>,
    /// Profile names and config keys, one copy each: a fleet's instances name few of them.
    words: HashSet<Arc<str>>,
}

/// An instance as few allocations: the double's memory counts in what the full loop
/// measures as the controller's.
struct MemInstance {
    profiles: Box<[Arc<str>]>,
    config: Config,
    /// Shown as its decimal text.
    etag: u64,
}

/// An instance's config, as pairs sorted by key: most hold none or the two claim keys,
/// and a map of two keys costs a whole tree node (the full loop's 100,000 instances would
/// weigh on the controller's measured memory).
#[derive(Default)]
struct Config(Vec<(Arc<str>, Box<str>)>);

impl Config {
    /// `key` interned (`State::word`).
    fn set(&mut self, key: Arc<str>, value: &str) {
        match self.0.binary_search_by(|(k, _)| (**k).cmp(&*key)) {
            Ok(i) => self.0[i].1 = value.into(),
            Err(i) => self.0.insert(i, (key, value.into())),
        }
    }

    fn unset(&mut self, key: &str) {
        self.0.retain(|(k, _)| &**k != key);
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }
}

struct MemProfile {
    content: ProfileContent,
    etag: u64,
}

struct FailRule {
    method: &'static str,
    /// `None`: until `heal()`.
    remaining: Option<usize>,
    make: MakeError,
    /// The call is carried out, and only its answer fails (lost on the way back).
    carried_out: bool,
}

/// A failure a call is judged to meet.
struct Fault {
    make: MakeError,
    carried_out: bool,
}

/// What the fault settings say about one call, decided when it arrives.
enum Gate {
    Refused(LxdError),
    Hang,
    Go {
        delay: Option<Duration>,
        fault: Option<Fault>,
    },
}

impl MemLxd {
    /// An empty server for project `test`.
    pub fn new() -> MemLxd {
        MemLxd::with_project(DEFAULT_PROJECT)
    }

    /// An empty server for `project`; it shows in `used_by` URLs and in events.
    /// As LXD makes a project with `features.profiles=true`: with its `default` profile.
    pub fn with_project(project: &str) -> MemLxd {
        let lxd = MemLxd {
            state: Arc::new(Mutex::new(State {
                project: project.to_string(),
                instances: BTreeMap::new(),
                profiles: BTreeMap::new(),
                etag_counter: 0,
                requests: Vec::new(),
                log_requests: true,
                counts: BTreeMap::new(),
                busy: Duration::ZERO,
                writes_succeeded: 0,
                rules: Vec::new(),
                delays: HashMap::new(),
                hung: HashSet::new(),
                unreachable: false,
                subscribers: Vec::new(),
                words: HashSet::new(),
            })),
        };
        lxd.add_profile("default", ProfileContent::default());
        lxd
    }

    pub fn project(&self) -> String {
        self.with(|s| s.project.clone())
    }

    // Seeding and inspection: not requests, no events, no faults.

    /// Creates or replaces an instance. The profiles are not checked, so a test can set
    /// up a state LXD would refuse.
    pub fn add_instance(&self, name: &str, profiles: &[&str]) {
        self.with(|s| {
            let etag = s.next_etag();
            let list = s.words(profiles.iter().copied());
            s.instances.insert(
                name.to_string(),
                MemInstance {
                    profiles: list,
                    config: Config::default(),
                    etag,
                },
            );
        });
    }

    /// Creates or replaces a profile.
    pub fn add_profile(&self, name: &str, content: ProfileContent) {
        self.with(|s| {
            let etag = s.next_etag();
            s.profiles
                .insert(name.to_string(), MemProfile { content, etag });
        });
    }

    pub fn instance_profiles(&self, name: &str) -> Option<Vec<String>> {
        self.with(|s| (s.instances.get(name)).map(|i| to_strings(&i.profiles)))
    }

    pub fn instance_config(&self, name: &str) -> Option<BTreeMap<String, String>> {
        self.with(|s| {
            (s.instances.get(name)).map(|i| {
                i.config
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
        })
    }

    pub fn profile(&self, name: &str) -> Option<ProfileContent> {
        self.with(|s| s.profiles.get(name).map(|p| p.content.clone()))
    }

    pub fn profile_names(&self) -> Vec<String> {
        self.with(|s| s.profiles.keys().cloned().collect())
    }

    // An operator's `lxc` commands: not requests and never faulted, but they change
    // ETags and emit events, which is how the controller notices drift.

    /// `lxc profile assign INSTANCE a,b`. Panics when the instance does not exist: that
    /// is a mistake in the test, not a scenario.
    pub fn set_profiles_by_hand(&self, instance: &str, profiles: &[&str]) {
        self.with(|s| {
            let etag = s.next_etag();
            let list = s.words(profiles.iter().copied());
            let Some(inst) = s.instances.get_mut(instance) else {
                panic!("set_profiles_by_hand: no instance {instance:?}");
            };
            inst.profiles = list;
            inst.etag = etag;
            s.emit(LifecycleAction::InstanceUpdated, instance);
        });
    }

    /// `lxc profile edit NAME`, or `lxc profile create` first when it does not exist
    /// (then the event is `profile-created`).
    pub fn set_profile_content_by_hand(&self, name: &str, content: ProfileContent) {
        self.with(|s| {
            let etag = s.next_etag();
            let action = match s.profiles.get_mut(name) {
                Some(p) => {
                    p.content = content;
                    p.etag = etag;
                    LifecycleAction::ProfileUpdated
                }
                None => {
                    s.profiles
                        .insert(name.to_string(), MemProfile { content, etag });
                    LifecycleAction::ProfileCreated
                }
            };
            s.emit(action, name);
        });
    }

    /// `lxc config set INSTANCE KEY VALUE` (`None`: `lxc config unset`). Panics when the
    /// instance does not exist.
    pub fn set_instance_config_by_hand(&self, instance: &str, key: &str, value: Option<&str>) {
        self.with(|s| {
            let etag = s.next_etag();
            let key_word = s.word(key);
            let Some(inst) = s.instances.get_mut(instance) else {
                panic!("set_instance_config_by_hand: no instance {instance:?}");
            };
            match value {
                Some(v) => inst.config.set(key_word, v),
                None => inst.config.unset(key),
            };
            inst.etag = etag;
            s.emit(LifecycleAction::InstanceUpdated, instance);
        });
    }

    // Request accounting.

    /// Every trait call since the start or the last `clear_requests`, in arrival order,
    /// refused and unfinished ones included.
    pub fn requests(&self) -> Vec<Request> {
        self.with(|s| s.requests.clone())
    }

    /// Calls that are not `GET`, whatever their outcome.
    pub fn writes(&self) -> usize {
        self.with(|s| {
            s.counts
                .iter()
                .filter(|(m, _)| !m.starts_with("GET "))
                .map(|(_, n)| n)
                .sum()
        })
    }

    /// Calls that are not `GET` and changed the state.
    pub fn writes_succeeded(&self) -> usize {
        self.with(|s| s.writes_succeeded)
    }

    /// Calls per method and kind of path, the object's name left out (`GET
    /// /1.0/instances/*`, `PATCH /1.0/instances/*`, `GET /1.0/profiles?recursion=1`),
    /// whether or not they are logged.
    pub fn request_counts(&self) -> BTreeMap<String, usize> {
        self.with(|s| s.counts.clone())
    }

    /// Time spent inside the double, its lock held, since it was made: seeding,
    /// inspection and every call (a bench's measure of the double's own share).
    pub fn busy(&self) -> Duration {
        self.with(|s| s.busy)
    }

    /// Whether each call is kept for `requests()` (the default). A bench at scale turns
    /// it off: the log would grow by one entry per call, and the memory measured is the
    /// controller's, not the double's. `request_counts` keeps counting.
    pub fn log_requests(&self, keep: bool) {
        self.with(|s| s.log_requests = keep);
    }

    /// Forgets the requests and resets both write counts.
    pub fn clear_requests(&self) {
        self.with(|s| {
            s.requests.clear();
            s.counts.clear();
            s.writes_succeeded = 0;
        });
    }

    // Fault injection. A call is judged when it arrives, before any delay, so the order
    // in which rules are consumed is the order of the calls.

    /// The next `n` calls with `method` fail with `make()` and change nothing. Rules
    /// queue: a later rule for the same method starts when the earlier ones are used up.
    pub fn fail_next(
        &self,
        method: &'static str,
        n: usize,
        make: impl Fn() -> LxdError + Send + Sync + 'static,
    ) {
        self.push_rule(method, Some(n), Arc::new(make), false);
    }

    /// The next `n` calls with `method` are carried out, and their answer is lost on the
    /// way back: the caller sees `LxdError::Unreachable`, as on a connection reset after
    /// LXD had the request. Queues with the `fail_next` rules.
    pub fn lose_answers_next(&self, method: &'static str, n: usize) {
        let reset = || LxdError::Unreachable {
            endpoint: "mem".into(),
            reason: "connection reset by peer".into(),
        };
        self.push_rule(method, Some(n), Arc::new(reset), true);
    }

    /// Queues a rule for `method`: `remaining` calls (`None`: until `heal()`; `Some(0)`:
    /// none at all).
    fn push_rule(
        &self,
        method: &'static str,
        remaining: Option<usize>,
        make: MakeError,
        carried_out: bool,
    ) {
        check_method(method);
        if remaining == Some(0) {
            return;
        }
        self.with(|s| {
            s.rules.push(FailRule {
                method,
                remaining,
                make,
                carried_out,
            });
        });
    }

    /// Every call with `method` fails with `make()` until `heal()`.
    pub fn fail_always(
        &self,
        method: &'static str,
        make: impl Fn() -> LxdError + Send + Sync + 'static,
    ) {
        self.push_rule(method, None, Arc::new(make), false);
    }

    /// Each call with `method` answers after `delay` (a `tokio::time::sleep`, so a paused
    /// test clock auto-advances through it). The change happens at the end of the delay,
    /// so a caller that gives up before then changes nothing. Replaces an earlier delay.
    pub fn delay(&self, method: &'static str, delay: Duration) {
        check_method(method);
        self.with(|s| {
            s.delays.insert(method, delay);
        });
    }

    /// Calls with `method` never answer and change nothing, as on a connection LXD
    /// accepted and then ignored; only the caller's timeout ends them. `heal()` lets
    /// later calls through; the ones already hanging stay hung.
    pub fn hang(&self, method: &'static str) {
        check_method(method);
        self.with(|s| {
            s.hung.insert(method);
        });
    }

    /// While true, every call fails at once with `LxdError::Unreachable`, consuming no
    /// `fail_next` rule: nothing reached the server. The event feed is not affected (see
    /// `disconnect_events`).
    pub fn unreachable(&self, unreachable: bool) {
        self.with(|s| s.unreachable = unreachable);
    }

    /// Back to a healthy server: no failure rules, delays, hangs, nor unreachability.
    pub fn heal(&self) {
        self.with(|s| {
            s.rules.clear();
            s.delays.clear();
            s.hung.clear();
            s.unreachable = false;
        });
    }

    // Events.

    /// A new subscription: `Connected` first, then every change from now on, in the
    /// order the changes happened.
    pub fn events(&self) -> UnboundedReceiver<EventNotice> {
        let (tx, rx) = unbounded_channel();
        self.with(|s| {
            // Sent under the lock so no change can slip in before it.
            if tx.send(EventNotice::Connected).is_ok() {
                s.subscribers.push(tx);
            }
        });
        rx
    }

    /// Ends every subscription (their receivers yield `None`); changes until the next
    /// `events()` reach nobody, as with a real connection lost.
    pub fn disconnect_events(&self) {
        self.with(|s| s.subscribers.clear());
    }

    /// Sends `Connected` again to every subscriber, as the real stream does after it
    /// reconnected (and events may have been lost meanwhile).
    pub fn reconnect_events(&self) {
        self.with(|s| {
            s.subscribers
                .retain(|tx| tx.send(EventNotice::Connected).is_ok());
        });
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        // A test that panicked while holding the lock must not turn every later
        // assertion into a PoisonError; the state itself is never left half-written.
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // The real clock, not tokio's: this is CPU spent, whatever a test's clock says.
        let started = std::time::Instant::now();
        let r = f(&mut guard);
        guard.busy += started.elapsed();
        r
    }

    /// One trait call: recorded, judged by the fault settings, delayed, then `op` runs
    /// under the lock (so its events go out in the order of the changes).
    async fn request<T>(
        &self,
        method: &'static str,
        path: String,
        op: impl FnOnce(&mut State) -> Result<T, LxdError>,
    ) -> Result<T, LxdError> {
        let gate = self.with(|s| s.admit(method, path));
        let (delay, fault) = match gate {
            Gate::Refused(e) => return Err(e),
            Gate::Hang => return std::future::pending().await,
            Gate::Go { delay, fault } => (delay, fault),
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        if let Some(Fault {
            make,
            carried_out: false,
        }) = &fault
        {
            // Called outside the lock: the closure is the test's and may inspect us.
            return Err(make());
        }
        let result = self.with(|s| {
            let result = op(s);
            if method != "GET" && result.is_ok() {
                s.writes_succeeded += 1;
            }
            result
        });
        match fault {
            Some(Fault { make, .. }) => Err(make()),
            None => result,
        }
    }
}

impl Default for MemLxd {
    fn default() -> Self {
        MemLxd::new()
    }
}

impl fmt::Debug for MemLxd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with(|s| {
            f.debug_struct("MemLxd")
                .field("project", &s.project)
                .field("instances", &s.instances.len())
                .field("profiles", &s.profiles.len())
                .field("requests", &s.requests.len())
                .finish_non_exhaustive()
        })
    }
}

impl State {
    fn next_etag(&mut self) -> u64 {
        self.etag_counter += 1;
        self.etag_counter
    }

    /// The one copy of `w`.
    fn word(&mut self, w: &str) -> Arc<str> {
        if let Some(known) = self.words.get(w) {
            return known.clone();
        }
        let new: Arc<str> = Arc::from(w);
        self.words.insert(new.clone());
        new
    }

    fn words<'a>(&mut self, list: impl Iterator<Item = &'a str>) -> Box<[Arc<str>]> {
        list.map(|w| self.word(w)).collect()
    }

    fn admit(&mut self, method: &'static str, path: String) -> Gate {
        let kind = ["/1.0/instances/", "/1.0/profiles/"]
            .into_iter()
            .find(|prefix| path.starts_with(prefix))
            .map_or(path.as_str(), |prefix| prefix);
        let star = if kind.ends_with('/') { "*" } else { "" };
        *self
            .counts
            .entry(format!("{method} {kind}{star}"))
            .or_default() += 1;
        if self.log_requests {
            self.requests.push(Request { method, path });
        }
        if self.unreachable {
            return Gate::Refused(LxdError::Unreachable {
                endpoint: "mem".into(),
                reason: "connection refused".into(),
            });
        }
        if self.hung.contains(method) {
            return Gate::Hang;
        }
        Gate::Go {
            delay: self.delays.get(method).copied(),
            fault: self.take_fault(method),
        }
    }

    fn take_fault(&mut self, method: &str) -> Option<Fault> {
        let index = self.rules.iter().position(|r| r.method == method)?;
        let rule = self.rules.get_mut(index)?;
        let fault = Fault {
            make: rule.make.clone(),
            carried_out: rule.carried_out,
        };
        if let Some(left) = rule.remaining.as_mut() {
            *left -= 1;
            if *left == 0 {
                self.rules.remove(index);
            }
        }
        Some(fault)
    }

    fn emit(&mut self, action: LifecycleAction, name: &str) {
        let notice = EventNotice::Lifecycle(LifecycleEvent::new(
            action,
            name.to_string(),
            self.project.clone(),
        ));
        self.subscribers
            .retain(|tx| tx.send(notice.clone()).is_ok());
    }

    fn profile(&self, name: &str, p: &MemProfile) -> Profile {
        let users = self
            .instances
            .iter()
            .filter(|(_, i)| i.profiles.iter().any(|n| &**n == name))
            .map(|(i, _)| i.as_str());
        self.profile_used_by(name, p, users)
    }

    /// `p` as LXD shows it, used by `users` (instance names, in order).
    fn profile_used_by<'a>(
        &self,
        name: &str,
        p: &MemProfile,
        users: impl Iterator<Item = &'a str>,
    ) -> Profile {
        // LXD leaves `?project=` out of its URLs in the default project.
        let suffix = if self.project == "default" {
            String::new()
        } else {
            format!("?project={}", self.project)
        };
        Profile {
            name: name.to_string(),
            content: p.content.clone(),
            // Each URL in a String of its own size, as a JSON decoder makes it (`format!`
            // leaves room to spare, and a fleet's `default` profile has a URL per instance).
            used_by: users
                .map(|i| {
                    let mut url = String::with_capacity(15 + i.len() + suffix.len());
                    url.push_str("/1.0/instances/");
                    url.push_str(i);
                    url.push_str(&suffix);
                    url
                })
                .collect(),
        }
    }

    /// Every profile with its users, in one pass over the instances (not one per
    /// profile: a listing of a thousand profiles on a hundred thousand instances must
    /// not cost the double more than it costs LXD).
    /// The users are held as instance numbers (a fleet's profiles have several users
    /// per instance, and this map is the double's, not the controller's, memory).
    fn each_profile(&self, mut each: impl FnMut(Profile)) {
        let instances: Vec<&str> = self.instances.keys().map(String::as_str).collect();
        let mut users: HashMap<&str, Vec<u32>> = HashMap::new();
        for (k, i) in self.instances.values().enumerate() {
            let k = u32::try_from(k).expect("fewer than 2^32 instances");
            for p in &i.profiles {
                let of = users.entry(&**p).or_default();
                // A list naming a profile twice (seeded by hand) uses it once.
                if of.last() != Some(&k) {
                    of.push(k);
                }
            }
        }
        for (name, p) in &self.profiles {
            let of = users.get(name.as_str()).map(Vec::as_slice).unwrap_or(&[]);
            let names = of
                .iter()
                .filter_map(|&k| instances.get(k as usize).copied());
            each(self.profile_used_by(name, p, names));
        }
    }

    fn in_use(&self, profile: &str) -> bool {
        self.instances
            .values()
            .any(|i| i.profiles.iter().any(|n| &**n == profile))
    }
}

fn instance_view(name: &str, inst: &MemInstance) -> Instance {
    Instance {
        name: name.to_string(),
        profiles: to_strings(&inst.profiles),
        status: "Running".into(),
        // What the client keeps of a real listing: the controller's keys.
        config: (inst.config.iter())
            .filter(|(k, _)| k.starts_with(crate::resource::profile::RESERVED_PREFIX))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// LXD compares `If-Match` with the current ETag and answers 412 with this text.
fn check_etag(if_match: Option<&str>, current: u64) -> Result<(), LxdError> {
    match if_match {
        Some(given) if given != current.to_string() => Err(LxdError::Conflict {
            message: format!("ETag doesn't match: {given} vs {current}"),
        }),
        _ => Ok(()),
    }
}

fn instance_not_found() -> LxdError {
    LxdError::NotFound {
        message: "Instance not found".into(),
    }
}

fn profile_not_found() -> LxdError {
    LxdError::NotFound {
        message: "Profile not found".into(),
    }
}

fn to_strings(names: &[impl AsRef<str>]) -> Vec<String> {
    names.iter().map(|n| n.as_ref().to_string()).collect()
}

fn check_method(method: &str) {
    assert!(
        METHODS.contains(&method),
        "unknown HTTP method {method:?}: expected one of {METHODS:?}"
    );
}

impl LxdApi for MemLxd {
    async fn each_instance<F: FnMut(Instance) + Send>(&self, mut each: F) -> Result<(), LxdError> {
        self.request("GET", "/1.0/instances?recursion=1".into(), |s| {
            for (name, i) in &s.instances {
                each(instance_view(name, i));
            }
            Ok(())
        })
        .await
    }

    async fn each_profile<F: FnMut(Profile) + Send>(&self, each: F) -> Result<(), LxdError> {
        self.request("GET", "/1.0/profiles?recursion=1".into(), |s| {
            s.each_profile(each);
            Ok(())
        })
        .await
    }

    async fn set_instance_profiles(
        &self,
        instance: &str,
        profiles: &[String],
        config: &BTreeMap<String, String>,
        if_match: Option<&str>,
    ) -> Result<(), LxdError> {
        let path = format!("/1.0/instances/{instance}");
        self.request("PATCH", path, |s| {
            // LXD's order: load the instance, check the ETag, load each profile, then
            // validate the list as a whole.
            let current = s.instances.get(instance).ok_or_else(instance_not_found)?;
            check_etag(if_match, current.etag)?;
            if profiles.iter().any(|p| !s.profiles.contains_key(p)) {
                return Err(profile_not_found());
            }
            let mut seen = HashSet::new();
            if !profiles.iter().all(|p| seen.insert(p)) {
                return Err(LxdError::Rejected {
                    status: 500,
                    message: "Duplicate profile found in request".into(),
                });
            }
            let etag = s.next_etag();
            let list = s.words(profiles.iter().map(String::as_str));
            let keys: Vec<Arc<str>> = config.keys().map(|k| s.word(k)).collect();
            let inst = s
                .instances
                .get_mut(instance)
                .ok_or_else(instance_not_found)?;
            inst.profiles = list;
            // PATCH merges config, as LXD 5.0 does.
            for (k, v) in keys.into_iter().zip(config.values()) {
                inst.config.set(k, v);
            }
            inst.etag = etag;
            s.emit(LifecycleAction::InstanceUpdated, instance);
            Ok(())
        })
        .await
    }

    async fn create_profile(&self, name: &str, content: &ProfileContent) -> Result<(), LxdError> {
        self.request("POST", "/1.0/profiles".into(), |s| {
            if name.is_empty() {
                return Err(LxdError::Rejected {
                    status: 400,
                    message: "No name provided".into(),
                });
            }
            if name.contains('/') {
                return Err(LxdError::Rejected {
                    status: 400,
                    message: "Profile names may not contain slashes".into(),
                });
            }
            if s.profiles.contains_key(name) {
                return Err(LxdError::AlreadyExists {
                    message: format!(
                        "Error inserting {name:?} into database: The profile already exists"
                    ),
                });
            }
            let etag = s.next_etag();
            s.profiles.insert(
                name.to_string(),
                MemProfile {
                    content: content.clone(),
                    etag,
                },
            );
            s.emit(LifecycleAction::ProfileCreated, name);
            Ok(())
        })
        .await
    }

    async fn replace_profile(
        &self,
        name: &str,
        content: &ProfileContent,
        if_match: Option<&str>,
    ) -> Result<(), LxdError> {
        let path = format!("/1.0/profiles/{name}");
        self.request("PUT", path, |s| {
            let current = s.profiles.get(name).ok_or_else(profile_not_found)?;
            check_etag(if_match, current.etag)?;
            let etag = s.next_etag();
            let p = s.profiles.get_mut(name).ok_or_else(profile_not_found)?;
            p.content = content.clone();
            p.etag = etag;
            s.emit(LifecycleAction::ProfileUpdated, name);
            Ok(())
        })
        .await
    }

    async fn delete_profile(&self, name: &str) -> Result<(), LxdError> {
        let path = format!("/1.0/profiles/{name}");
        self.request("DELETE", path, |s| {
            // LXD refuses `default` before looking it up.
            if name == "default" {
                return Err(LxdError::Rejected {
                    status: 403,
                    message: "The 'default' profile cannot be deleted".into(),
                });
            }
            if !s.profiles.contains_key(name) {
                return Err(profile_not_found());
            }
            if s.in_use(name) {
                return Err(LxdError::InUse {
                    message: "Profile is currently in use".into(),
                });
            }
            s.profiles.remove(name);
            s.emit(LifecycleAction::ProfileDeleted, name);
            Ok(())
        })
        .await
    }

    async fn get_instance(&self, name: &str) -> Result<(Instance, Option<String>), LxdError> {
        let path = format!("/1.0/instances/{name}");
        self.request("GET", path, |s| {
            let i = s.instances.get(name).ok_or_else(instance_not_found)?;
            Ok((instance_view(name, i), Some(i.etag.to_string())))
        })
        .await
    }

    async fn server(&self) -> Result<ServerInfo, LxdError> {
        self.request("GET", "/1.0".into(), |_| {
            Ok(ServerInfo {
                api_version: "1.0".into(),
                api_extensions: ["etag", "profile_usedby", "projects", "instances"]
                    .map(String::from)
                    .to_vec(),
                server_version: "5.0.2".into(),
            })
        })
        .await
    }

    async fn get_profile(&self, name: &str) -> Result<(Profile, Option<String>), LxdError> {
        let path = format!("/1.0/profiles/{name}");
        self.request("GET", path, |s| {
            let p = s.profiles.get(name).ok_or_else(profile_not_found)?;
            Ok((s.profile(name, p), Some(p.etag.to_string())))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lxd::ErrorCategory;
    use tokio::sync::mpsc::error::TryRecvError;
    use tokio::time::Instant;

    fn content(key: &str, value: &str) -> ProfileContent {
        ProfileContent {
            description: String::new(),
            config: [(key.to_string(), value.to_string())].into(),
            devices: BTreeMap::new(),
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        to_strings(list)
    }

    fn lifecycle(action: LifecycleAction, name: &str) -> EventNotice {
        EventNotice::Lifecycle(LifecycleEvent::new(
            action,
            name.into(),
            DEFAULT_PROJECT.into(),
        ))
    }

    fn drain(rx: &mut UnboundedReceiver<EventNotice>) -> Vec<EventNotice> {
        let mut out = Vec::new();
        while let Ok(n) = rx.try_recv() {
            out.push(n);
        }
        out
    }

    fn conflict() -> LxdError {
        LxdError::Conflict {
            message: "injected".into(),
        }
    }

    /// Two instances, two profiles, `p` used by both.
    fn seeded() -> MemLxd {
        let lxd = MemLxd::new();
        lxd.add_profile("default", ProfileContent::default());
        lxd.add_profile("p", content("a", "1"));
        lxd.add_instance("i-1", &["default", "p"]);
        lxd.add_instance("i-0", &["default", "p"]);
        lxd
    }

    #[test]
    fn is_a_shareable_handle() {
        fn check<T: Clone + Send + Sync + 'static>() {}
        check::<MemLxd>();
        let a = MemLxd::new();
        let b = a.clone();
        b.add_profile("p", ProfileContent::default());
        assert_eq!(a.profile_names(), ["default", "p"]);
    }

    #[tokio::test(start_paused = true)]
    async fn lists_are_sorted_and_profiles_carry_used_by() {
        let lxd = seeded();
        lxd.add_instance("i-2", &["default"]);
        let instances = lxd.list_instances().await.unwrap();
        let got: Vec<_> = instances.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(got, ["i-0", "i-1", "i-2"]);
        assert_eq!(instances[0].profiles, names(&["default", "p"]));

        let profiles = lxd.list_profiles().await.unwrap();
        let got: Vec<_> = profiles.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(got, ["default", "p"]);
        assert_eq!(
            profiles[1].used_by,
            [
                "/1.0/instances/i-0?project=test",
                "/1.0/instances/i-1?project=test"
            ]
        );
        assert_eq!(
            profiles[1].used_by_instances().collect::<Vec<_>>(),
            ["i-0", "i-1"]
        );
        assert_eq!(profiles[1].content, content("a", "1"));
        assert_eq!(profiles[0].used_by.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn used_by_follows_the_project_and_omits_default() {
        let lxd = MemLxd::with_project("juju");
        lxd.add_profile("p", ProfileContent::default());
        lxd.add_instance("m", &["p"]);
        let (p, _) = lxd.get_profile("p").await.unwrap();
        assert_eq!(p.used_by, ["/1.0/instances/m?project=juju"]);

        let lxd = MemLxd::with_project("default");
        lxd.add_profile("p", ProfileContent::default());
        lxd.add_instance("m", &["p"]);
        let (p, _) = lxd.get_profile("p").await.unwrap();
        assert_eq!(p.used_by, ["/1.0/instances/m"]);
    }

    #[tokio::test(start_paused = true)]
    async fn gets_return_the_object_and_an_etag_that_every_write_changes() {
        let lxd = seeded();
        let (inst, e1) = lxd.get_instance("i-0").await.unwrap();
        assert_eq!(inst.name, "i-0");
        assert_eq!(inst.profiles, names(&["default", "p"]));
        let e1 = e1.unwrap();
        // The same list again is still a write, and a new ETag.
        lxd.set_instance_profiles(
            "i-0",
            &names(&["default", "p"]),
            &Default::default(),
            Some(&e1),
        )
        .await
        .unwrap();
        let (_, e2) = lxd.get_instance("i-0").await.unwrap();
        assert_ne!(Some(e1), e2);

        let (p, e1) = lxd.get_profile("p").await.unwrap();
        assert_eq!(p.content, content("a", "1"));
        lxd.replace_profile("p", &content("a", "2"), e1.as_deref())
            .await
            .unwrap();
        let (p, e2) = lxd.get_profile("p").await.unwrap();
        assert_eq!(p.content, content("a", "2"));
        assert_ne!(e1, e2);
    }

    #[tokio::test(start_paused = true)]
    async fn missing_objects_are_not_found_with_lxd_texts() {
        let lxd = seeded();
        let e = lxd.get_instance("nope").await.unwrap_err();
        assert_eq!(e.category(), ErrorCategory::NotFound);
        assert_eq!(e.to_string(), "Instance not found");
        let e = lxd.get_profile("nope").await.unwrap_err();
        assert_eq!(e.to_string(), "Profile not found");
        let e = lxd
            .set_instance_profiles("nope", &names(&["p"]), &Default::default(), None)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "Instance not found");
        let e = lxd
            .replace_profile("nope", &ProfileContent::default(), None)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "Profile not found");
        let e = lxd.delete_profile("nope").await.unwrap_err();
        assert_eq!(e.category(), ErrorCategory::NotFound);
        assert_eq!(lxd.writes(), 3);
        assert_eq!(lxd.writes_succeeded(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_etag_is_a_conflict_and_changes_nothing() {
        let lxd = seeded();
        let mut events = lxd.events();
        let (_, etag) = lxd.get_instance("i-0").await.unwrap();
        // An operator edits the instance between our read and our write.
        lxd.set_instance_config_by_hand("i-0", "limits.cpu", Some("2"));
        let e = lxd
            .set_instance_profiles(
                "i-0",
                &names(&["default"]),
                &Default::default(),
                etag.as_deref(),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, LxdError::Conflict { .. }), "{e:?}");
        assert!(e.to_string().starts_with("ETag doesn't match: "));
        assert!(e.is_transient());
        assert_eq!(
            lxd.instance_profiles("i-0").unwrap(),
            names(&["default", "p"])
        );
        assert_eq!(lxd.instance_config("i-0").unwrap()["limits.cpu"], "2");

        let (_, etag) = lxd.get_profile("p").await.unwrap();
        lxd.set_profile_content_by_hand("p", content("a", "hand"));
        let e = lxd
            .replace_profile("p", &content("a", "ours"), etag.as_deref())
            .await
            .unwrap_err();
        assert!(matches!(e, LxdError::Conflict { .. }), "{e:?}");
        assert_eq!(lxd.profile("p").unwrap(), content("a", "hand"));

        // No If-Match: LXD does not check.
        lxd.replace_profile("p", &content("a", "ours"), None)
            .await
            .unwrap();
        assert_eq!(lxd.profile("p").unwrap(), content("a", "ours"));
        assert_eq!(
            drain(&mut events),
            [
                EventNotice::Connected,
                lifecycle(LifecycleAction::InstanceUpdated, "i-0"),
                lifecycle(LifecycleAction::ProfileUpdated, "p"),
                lifecycle(LifecycleAction::ProfileUpdated, "p"),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn assigning_a_missing_profile_is_not_found_and_leaves_the_list() {
        let lxd = seeded();
        let (_, etag) = lxd.get_instance("i-0").await.unwrap();
        let e = lxd
            .set_instance_profiles(
                "i-0",
                &names(&["default", "ghost"]),
                &Default::default(),
                etag.as_deref(),
            )
            .await
            .unwrap_err();
        assert_eq!(e.category(), ErrorCategory::NotFound);
        assert_eq!(e.to_string(), "Profile not found");
        assert_eq!(
            lxd.instance_profiles("i-0").unwrap(),
            names(&["default", "p"])
        );
        // Nothing changed, so the ETag still holds.
        let (_, again) = lxd.get_instance("i-0").await.unwrap();
        assert_eq!(etag, again);

        let e = lxd
            .set_instance_profiles("i-0", &names(&["p", "p"]), &Default::default(), None)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "Duplicate profile found in request");
        assert_eq!(
            lxd.instance_profiles("i-0").unwrap(),
            names(&["default", "p"])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn creating_an_existing_profile_is_already_exists() {
        let lxd = seeded();
        let e = lxd
            .create_profile("p", &ProfileContent::default())
            .await
            .unwrap_err();
        assert_eq!(e.category(), ErrorCategory::AlreadyExists);
        assert_eq!(
            e.to_string(),
            "Error inserting \"p\" into database: The profile already exists"
        );
        assert_eq!(lxd.profile("p").unwrap(), content("a", "1"));

        lxd.create_profile("q", &content("b", "2")).await.unwrap();
        assert_eq!(lxd.profile("q").unwrap(), content("b", "2"));
        assert_eq!(lxd.profile_names(), ["default", "p", "q"]);
        let e = lxd
            .create_profile("a/b", &ProfileContent::default())
            .await
            .unwrap_err();
        assert!(matches!(e, LxdError::Rejected { status: 400, .. }), "{e:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn deleting_is_refused_while_in_use_and_for_default() {
        let lxd = seeded();
        let e = lxd.delete_profile("p").await.unwrap_err();
        assert!(
            matches!(&e, LxdError::InUse { message } if message == "Profile is currently in use")
        );
        assert!(lxd.profile("p").is_some());

        let e = lxd.delete_profile("default").await.unwrap_err();
        assert!(
            matches!(&e, LxdError::Rejected { status: 403, message } if message == "The 'default' profile cannot be deleted"),
            "{e:?}"
        );

        lxd.set_profiles_by_hand("i-0", &["default"]);
        lxd.set_profiles_by_hand("i-1", &["default"]);
        let mut events = lxd.events();
        lxd.delete_profile("p").await.unwrap();
        assert_eq!(lxd.profile_names(), ["default"]);
        assert_eq!(
            drain(&mut events),
            [
                EventNotice::Connected,
                lifecycle(LifecycleAction::ProfileDeleted, "p")
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn events_start_with_connected_and_follow_the_changes_in_order() {
        let lxd = MemLxd::new();
        lxd.add_profile("default", ProfileContent::default());
        lxd.add_instance("i-0", &["default"]);
        let mut events = lxd.events();
        lxd.create_profile("p", &ProfileContent::default())
            .await
            .unwrap();
        lxd.set_instance_profiles("i-0", &names(&["default", "p"]), &Default::default(), None)
            .await
            .unwrap();
        lxd.set_profiles_by_hand("i-0", &["default"]);
        lxd.set_profile_content_by_hand("p", content("x", "y"));
        lxd.set_profile_content_by_hand("new", ProfileContent::default());
        // Refused writes, reads and seeding emit nothing.
        lxd.create_profile("p", &ProfileContent::default())
            .await
            .unwrap_err();
        lxd.list_profiles().await.unwrap();
        lxd.add_profile("seeded", ProfileContent::default());
        lxd.replace_profile("p", &ProfileContent::default(), None)
            .await
            .unwrap();
        lxd.delete_profile("p").await.unwrap();
        assert_eq!(
            drain(&mut events),
            [
                EventNotice::Connected,
                lifecycle(LifecycleAction::ProfileCreated, "p"),
                lifecycle(LifecycleAction::InstanceUpdated, "i-0"),
                lifecycle(LifecycleAction::InstanceUpdated, "i-0"),
                lifecycle(LifecycleAction::ProfileUpdated, "p"),
                lifecycle(LifecycleAction::ProfileCreated, "new"),
                lifecycle(LifecycleAction::ProfileUpdated, "p"),
                lifecycle(LifecycleAction::ProfileDeleted, "p"),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn each_subscriber_gets_what_happens_after_it_subscribed() {
        let lxd = seeded();
        let mut early = lxd.events();
        lxd.set_profiles_by_hand("i-0", &["default"]);
        let mut late = lxd.events();
        let dropped = lxd.events();
        drop(dropped);
        lxd.set_profiles_by_hand("i-1", &["default"]);
        assert_eq!(
            drain(&mut early),
            [
                EventNotice::Connected,
                lifecycle(LifecycleAction::InstanceUpdated, "i-0"),
                lifecycle(LifecycleAction::InstanceUpdated, "i-1"),
            ]
        );
        assert_eq!(
            drain(&mut late),
            [
                EventNotice::Connected,
                lifecycle(LifecycleAction::InstanceUpdated, "i-1"),
            ]
        );

        lxd.reconnect_events();
        assert_eq!(drain(&mut late), [EventNotice::Connected]);

        lxd.disconnect_events();
        lxd.set_profiles_by_hand("i-0", &["default", "p"]);
        assert_eq!(early.recv().await, Some(EventNotice::Connected));
        assert_eq!(early.recv().await, None);
        assert_eq!(late.try_recv(), Err(TryRecvError::Disconnected));
        // A new subscription after the loss sees only what follows.
        let mut again = lxd.events();
        assert_eq!(drain(&mut again), [EventNotice::Connected]);
    }

    #[tokio::test(start_paused = true)]
    async fn every_call_is_recorded_with_method_and_path() {
        let lxd = seeded();
        lxd.list_instances().await.unwrap();
        lxd.list_profiles().await.unwrap();
        lxd.get_instance("i-0").await.unwrap();
        lxd.get_profile("p").await.unwrap();
        lxd.server().await.unwrap();
        lxd.set_instance_profiles("i-0", &names(&["default"]), &Default::default(), None)
            .await
            .unwrap();
        lxd.create_profile("q", &ProfileContent::default())
            .await
            .unwrap();
        lxd.replace_profile("q", &content("a", "1"), None)
            .await
            .unwrap();
        lxd.delete_profile("p").await.unwrap_err();
        lxd.delete_profile("q").await.unwrap();
        assert_eq!(
            lxd.requests(),
            [
                Request::new("GET", "/1.0/instances?recursion=1"),
                Request::new("GET", "/1.0/profiles?recursion=1"),
                Request::new("GET", "/1.0/instances/i-0"),
                Request::new("GET", "/1.0/profiles/p"),
                Request::new("GET", "/1.0"),
                Request::new("PATCH", "/1.0/instances/i-0"),
                Request::new("POST", "/1.0/profiles"),
                Request::new("PUT", "/1.0/profiles/q"),
                Request::new("DELETE", "/1.0/profiles/p"),
                Request::new("DELETE", "/1.0/profiles/q"),
            ]
        );
        assert_eq!(lxd.writes(), 5);
        assert_eq!(lxd.writes_succeeded(), 4);
        lxd.clear_requests();
        assert!(lxd.requests().is_empty());
        assert_eq!((lxd.writes(), lxd.writes_succeeded()), (0, 0));
        // Seeding and by-hand changes are not requests.
        lxd.add_instance("i-9", &[]);
        lxd.set_profiles_by_hand("i-9", &["default"]);
        assert!(lxd.requests().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn without_the_log_calls_are_still_counted_by_kind() {
        let lxd = seeded();
        lxd.log_requests(false);
        lxd.list_profiles().await.unwrap();
        lxd.get_instance("i-0").await.unwrap();
        lxd.get_instance("i-1").await.unwrap();
        lxd.set_instance_profiles("i-0", &names(&["default"]), &Default::default(), None)
            .await
            .unwrap();
        lxd.delete_profile("nope").await.unwrap_err();
        assert!(lxd.requests().is_empty());
        assert_eq!(
            lxd.request_counts(),
            [
                ("DELETE /1.0/profiles/*".to_string(), 1),
                ("GET /1.0/instances/*".to_string(), 2),
                ("GET /1.0/profiles?recursion=1".to_string(), 1),
                ("PATCH /1.0/instances/*".to_string(), 1),
            ]
            .into()
        );
        assert_eq!((lxd.writes(), lxd.writes_succeeded()), (2, 1));
        // The listing's used_by is the instances' own lists, one pass for all profiles.
        let profiles = lxd.list_profiles().await.unwrap();
        assert_eq!(profiles[1].used_by, ["/1.0/instances/i-1?project=test"]);
        assert!(lxd.busy() > Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn server_says_lxd_5_0() {
        let info = MemLxd::new().server().await.unwrap();
        assert_eq!(info.api_version, "1.0");
        assert_eq!(info.server_version, "5.0.2");
    }

    #[tokio::test(start_paused = true)]
    async fn fail_next_consumes_exactly_n_in_queue_order_and_changes_nothing() {
        let lxd = seeded();
        lxd.fail_next("PUT", 2, conflict);
        lxd.fail_next("PUT", 1, || LxdError::Rejected {
            status: 400,
            message: "third".into(),
        });
        // Other methods are untouched.
        lxd.get_profile("p").await.unwrap();
        for _ in 0..2 {
            let e = lxd
                .replace_profile("p", &content("a", "2"), None)
                .await
                .unwrap_err();
            assert_eq!(e.category(), ErrorCategory::Conflict);
        }
        let e = lxd
            .replace_profile("p", &content("a", "2"), None)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "third");
        assert_eq!(lxd.profile("p").unwrap(), content("a", "1"));
        lxd.replace_profile("p", &content("a", "2"), None)
            .await
            .unwrap();
        assert_eq!(lxd.profile("p").unwrap(), content("a", "2"));
        assert_eq!(lxd.writes(), 4);
        assert_eq!(lxd.writes_succeeded(), 1);

        // Injected failures are judged before the object is looked at.
        lxd.fail_next("DELETE", 1, conflict);
        let e = lxd.delete_profile("nope").await.unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Conflict);
        lxd.fail_next("GET", 0, conflict);
        lxd.list_instances().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn fail_always_holds_until_heal() {
        let lxd = seeded();
        lxd.fail_always("GET", || LxdError::Timeout {
            what: "GET".into(),
            after: Duration::from_secs(30),
        });
        for _ in 0..5 {
            let e = lxd.list_profiles().await.unwrap_err();
            assert_eq!(e.category(), ErrorCategory::Timeout);
        }
        lxd.heal();
        assert_eq!(lxd.list_profiles().await.unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn delay_advances_the_paused_clock() {
        let lxd = seeded();
        lxd.delay("PATCH", Duration::from_secs(3));
        let start = Instant::now();
        lxd.list_instances().await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
        lxd.set_instance_profiles("i-0", &names(&["default"]), &Default::default(), None)
            .await
            .unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert_eq!(lxd.instance_profiles("i-0").unwrap(), names(&["default"]));

        // A caller that gives up during the delay changed nothing.
        let give_up = tokio::time::timeout(
            Duration::from_secs(1),
            lxd.set_instance_profiles("i-0", &names(&["p"]), &Default::default(), None),
        )
        .await;
        assert!(give_up.is_err());
        assert_eq!(lxd.instance_profiles("i-0").unwrap(), names(&["default"]));
        assert_eq!(lxd.writes_succeeded(), 1);

        lxd.heal();
        let start = Instant::now();
        lxd.set_instance_profiles("i-0", &names(&["p"]), &Default::default(), None)
            .await
            .unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_call_ends_only_by_the_callers_timeout() {
        let lxd = seeded();
        let mut events = lxd.events();
        lxd.hang("DELETE");
        lxd.set_profiles_by_hand("i-0", &["default"]);
        lxd.set_profiles_by_hand("i-1", &["default"]);
        let start = Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(30), lxd.delete_profile("p")).await;
        assert!(outcome.is_err());
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        assert!(lxd.profile("p").is_some());
        assert_eq!(lxd.requests(), [Request::new("DELETE", "/1.0/profiles/p")]);
        assert_eq!((lxd.writes(), lxd.writes_succeeded()), (1, 0));
        // Other methods answer meanwhile.
        lxd.list_profiles().await.unwrap();

        lxd.heal();
        lxd.delete_profile("p").await.unwrap();
        assert_eq!(
            drain(&mut events).last(),
            Some(&lifecycle(LifecycleAction::ProfileDeleted, "p"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_fails_every_call_at_once() {
        let lxd = seeded();
        lxd.fail_next("GET", 1, conflict);
        lxd.delay("GET", Duration::from_secs(5));
        lxd.unreachable(true);
        let start = Instant::now();
        let e = lxd.server().await.unwrap_err();
        assert!(
            matches!(&e, LxdError::Unreachable { endpoint, reason } if endpoint == "mem" && reason == "connection refused"),
            "{e:?}"
        );
        let e = lxd
            .create_profile("q", &ProfileContent::default())
            .await
            .unwrap_err();
        assert!(e.is_transient());
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert!(lxd.profile("q").is_none());
        assert_eq!(lxd.requests().len(), 2);
        assert_eq!((lxd.writes(), lxd.writes_succeeded()), (1, 0));

        // The failure rule was not consumed: nothing reached the server.
        lxd.unreachable(false);
        let e = lxd.server().await.unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Conflict);
        lxd.server().await.unwrap();
    }

    #[test]
    #[should_panic(expected = "unknown HTTP method")]
    fn a_misspelt_method_is_caught() {
        MemLxd::new().fail_next("get", 1, conflict);
    }
}
