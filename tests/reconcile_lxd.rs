//! Juju's instancemutater behaviour, as tests against the real LXD daemon and the real
//! Incus daemon (each scenario twice, `::lxd` and `::incus`): each in its own project,
//! through the controller library (so LXD writes can be counted) or the built binary,
//! asserting on LXD state and on status.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lxd_mutater::lxd::{LxdClient, RequestObserver};
use lxd_mutater::pipeline::Pipeline;
use lxd_mutater::queue::BackoffConfig;
use lxd_mutater::reconcile::Options;
use lxd_mutater::resource::{Kind, Phase, ProfileNames, ResourceKey, Status};
use lxd_mutater::source::files::FileSnapshot;
use lxd_mutater::status::StatusStore;
use lxd_mutater::status::files::StatusFiles;
use lxd_mutater::status::metrics::Telemetry;
use support::{Backend, TestProject};

/// Counts LXD requests: reads, and writes (anything that changes LXD).
#[derive(Default)]
struct Requests {
    reads: AtomicUsize,
    writes: AtomicUsize,
}

impl RequestObserver for Requests {
    fn observe(&self, method: &str, _code: Option<u16>, _elapsed: Duration) {
        let counter = if method == "GET" {
            &self.reads
        } else {
            &self.writes
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

struct Harness {
    lxd: TestProject,
    resources: tempfile::TempDir,
    state: tempfile::TempDir,
    requests: Arc<Requests>,
}

const MODEL: &str = "m";

impl Harness {
    fn new(backend: Backend) -> Harness {
        Harness {
            lxd: TestProject::on(backend),
            resources: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
            requests: Arc::new(Requests::default()),
        }
    }

    /// Instance `i0`, Application `one` (revision 3, a profile) and Machine `0` on it.
    fn one_machine(backend: Backend) -> Harness {
        let h = Harness::new(backend);
        h.lxd.empty_instance("i0");
        h.write(
            "r.yaml",
            &(app("one", 3, NESTING) + &machine("0", Some("i0"), &["one"], "")),
        );
        h
    }

    fn write(&self, file: &str, yaml: &str) {
        std::fs::write(self.resources.path().join(file), yaml).unwrap();
    }

    fn controller(&self, dry_run: bool, machine: Option<&str>) -> Pipeline<LxdClient> {
        self.controller_with(dry_run, machine, BackoffConfig::default())
    }

    fn controller_with(
        &self,
        dry_run: bool,
        machine: Option<&str>,
        backoff: BackoffConfig,
    ) -> Pipeline<LxdClient> {
        let client = self.lxd.client().with_observer(self.requests.clone());
        Pipeline::new(
            client,
            Arc::new(StatusFiles::open(self.state.path()).unwrap()),
            Options {
                machine: machine.map(str::to_string),
                workers: 4,
                dry_run,
                backoff,
                ..Options::new(ProfileNames::default())
            },
            &Telemetry::new(),
        )
    }

    /// One pass over every resource, as `run --once` does.
    async fn pass_with(&self, dry_run: bool, machine: Option<&str>) {
        let ctl = self.controller(dry_run, machine);
        let mut snapshot = FileSnapshot::default();
        snapshot.rescan(self.resources.path());
        ctl.load(snapshot.resources());
        ctl.relist().await.unwrap();
        ctl.enqueue_all();
        tokio::time::timeout(Duration::from_secs(60), ctl.worker.clone().run(true))
            .await
            .expect("a pass finishes");
        assert!(ctl.store_statuses(Duration::from_secs(5)).await);
    }

    async fn pass(&self) {
        self.pass_with(false, None).await
    }

    fn status(&self, kind: Kind, name: &str) -> Status {
        StatusFiles::open(self.state.path())
            .unwrap()
            .get(&ResourceKey::new(kind, MODEL, name))
            .unwrap_or_else(|| panic!("no status for {kind} {name}"))
    }

    fn writes(&self) -> usize {
        self.requests.writes.load(Ordering::SeqCst)
    }

    fn profiles(&self, instance: &str) -> Vec<String> {
        self.lxd.instance_profiles(instance)
    }

    fn has_profile(&self, name: &str) -> bool {
        self.lxd.try_lxc(&["profile", "show", name]).is_ok()
    }
}

fn app(name: &str, rev: u64, profile: &str) -> String {
    format!(
        "apiVersion: lxdmutater.dev/v1alpha1\nkind: Application\nmetadata: {{name: {name}, namespace: {MODEL}}}\nspec:\n  revision: {rev}\n{profile}---\n"
    )
}

const NESTING: &str = "  lxdProfile:\n    config: {security.nesting: true}\n";

fn machine(name: &str, instance: Option<&str>, apps: &[&str], extra: &str) -> String {
    let instance = instance
        .map(|i| format!("  instance: {i}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: lxdmutater.dev/v1alpha1\nkind: Machine\nmetadata: {{name: '{name}', namespace: {MODEL}}}\nspec:\n{instance}  applications: [{}]\n{extra}---\n",
        apps.join(", ")
    )
}

fn container(name: &str, host: &str, instance: &str, apps: &[&str]) -> String {
    format!(
        "apiVersion: lxdmutater.dev/v1alpha1\nkind: Container\nmetadata: {{name: '{name}', namespace: {MODEL}}}\nspec:\n  machine: '{host}'\n  instance: {instance}\n  applications: [{}]\n---\n",
        apps.join(", ")
    )
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

on_both!(async fn machine_with_one_application_gets_base_and_charm_profile_then_in_sync_sends_no_write);
async fn machine_with_one_application_gets_base_and_charm_profile_then_in_sync_sends_no_write(
    backend: Backend,
) {
    let h = Harness::one_machine(backend);
    h.pass().await;
    let want = strings(&["default", "juju-m", "juju-m-one-3"]);
    assert_eq!(h.profiles("i0"), want);
    let s = h.status(Kind::Machine, "0");
    assert_eq!(s.phase, Phase::Applied);
    assert_eq!(s.profiles, want);
    assert_eq!(
        h.lxd.profile_json("juju-m")["config"]["boot.autostart"],
        "true"
    );
    assert_eq!(
        h.lxd.profile_json("juju-m-one-3")["config"]["security.nesting"],
        "true"
    );
    assert_eq!(
        h.lxd.profile_json("juju-m-one-3")["config"]["user.lxd-mutater.owner"],
        "lxd-mutater"
    );
    // Two profiles created and one PATCH: three writes.
    assert_eq!(h.writes(), 3);

    // Case 2: already in sync: no write request at all.
    h.pass().await;
    assert_eq!(
        h.writes(),
        3,
        "a pass over an instance in sync must not write"
    );
    assert_eq!(h.status(Kind::Machine, "0").phase, Phase::Applied);
}

on_both!(async fn removed_application_leaves_base_profiles_and_its_unused_profile_is_deleted);
async fn removed_application_leaves_base_profiles_and_its_unused_profile_is_deleted(
    backend: Backend,
) {
    let h = Harness::one_machine(backend);
    h.pass().await;
    h.write(
        "r.yaml",
        &(app("one", 3, NESTING) + &machine("0", Some("i0"), &[], "")),
    );
    h.pass().await;
    assert_eq!(h.profiles("i0"), strings(&["default", "juju-m"]));
    assert!(
        !h.has_profile("juju-m-one-3"),
        "unused owned profile deleted"
    );
    assert!(h.has_profile("juju-m"), "the model profile stays");
}

on_both!(async fn upgrade_switches_in_one_patch_and_keeps_the_old_profile_while_used);
async fn upgrade_switches_in_one_patch_and_keeps_the_old_profile_while_used(backend: Backend) {
    let h = Harness::new(backend);
    h.lxd.empty_instance("i0");
    h.lxd.empty_instance("i1");
    let machines = machine("0", Some("i0"), &["one"], "") + &machine("1", Some("i1"), &["one"], "");
    h.write("r.yaml", &(app("one", 2, NESTING) + &machines));
    h.pass().await;
    assert_eq!(
        h.profiles("i1"),
        strings(&["default", "juju-m", "juju-m-one-2"])
    );
    // Machine 1 is marked dead (not managed): it keeps revision 2.
    let machines = machine("0", Some("i0"), &["one"], "")
        + &machine("1", Some("i1"), &["one"], "  life: dead\n");
    h.write("r.yaml", &(app("one", 3, NESTING) + &machines));
    let before = h.writes();
    h.pass().await;
    assert_eq!(
        h.profiles("i0"),
        strings(&["default", "juju-m", "juju-m-one-3"])
    );
    assert_eq!(
        h.profiles("i1"),
        strings(&["default", "juju-m", "juju-m-one-2"])
    );
    assert_eq!(h.writes() - before, 2, "create the new profile, one PATCH");
    assert!(h.has_profile("juju-m-one-2"), "still used by i1: kept");
    assert_eq!(h.status(Kind::Machine, "1").phase, Phase::Skipped);
    // Now machine 1 is upgraded too: the old profile goes.
    h.write(
        "r.yaml",
        &(app("one", 3, NESTING)
            + &machine("0", Some("i0"), &["one"], "")
            + &machine("1", Some("i1"), &["one"], "")),
    );
    let before = h.writes();
    h.pass().await;
    assert_eq!(
        h.profiles("i1"),
        strings(&["default", "juju-m", "juju-m-one-3"])
    );
    assert!(!h.has_profile("juju-m-one-2"));
    assert_eq!(h.writes() - before, 2, "one PATCH, one DELETE");
}

on_both!(async fn container_flavour_has_default_base_and_machine_filter_takes_only_that_hosts_containers);
async fn container_flavour_has_default_base_and_machine_filter_takes_only_that_hosts_containers(
    backend: Backend,
) {
    let h = Harness::new(backend);
    h.lxd.empty_instance("c0");
    h.lxd.empty_instance("c1");
    h.write(
        "r.yaml",
        &(app("one", 3, NESTING)
            + &container("0-lxd-0", "0", "c0", &["one"])
            + &container("1-lxd-0", "1", "c1", &["one"])),
    );
    h.pass_with(false, Some("0")).await;
    assert_eq!(h.profiles("c0"), strings(&["default", "juju-m-one-3"]));
    assert_eq!(
        h.profiles("c1"),
        strings(&["default"]),
        "another host's container is not touched"
    );
}

on_both!(async fn applications_without_profiles_add_nothing_and_duplicates_collapse);
async fn applications_without_profiles_add_nothing_and_duplicates_collapse(backend: Backend) {
    let h = Harness::new(backend);
    h.lxd.empty_instance("i0");
    let apps = app("one", 3, NESTING)
        + &app("bare", 1, "")
        + &app("empty", 1, "  lxdProfile: {description: nothing}\n");
    h.write(
        "r.yaml",
        &(apps + &machine("0", Some("i0"), &["bare", "one", "empty", "one"], "")),
    );
    h.pass().await;
    assert_eq!(
        h.profiles("i0"),
        strings(&["default", "juju-m", "juju-m-one-3"])
    );
    assert!(
        !h.has_profile("juju-m-empty-1"),
        "an empty profile is never written"
    );
    assert!(!h.has_profile("juju-m-bare-1"));
}

on_both!(async fn dead_and_manual_machines_are_skipped_and_untouched);
async fn dead_and_manual_machines_are_skipped_and_untouched(backend: Backend) {
    let h = Harness::new(backend);
    h.lxd.empty_instance("i0");
    h.lxd.empty_instance("i1");
    let r = app("one", 3, NESTING)
        + &machine("0", Some("i0"), &["one"], "  life: dead\n")
        + &machine("1", Some("i1"), &["one"], "  manual: true\n");
    h.write("r.yaml", &r);
    h.pass().await;
    assert_eq!(h.profiles("i0"), strings(&["default"]));
    assert_eq!(h.profiles("i1"), strings(&["default"]));
    assert_eq!(h.status(Kind::Machine, "0").phase, Phase::Skipped);
    assert_eq!(h.status(Kind::Machine, "1").phase, Phase::Skipped);
    assert_eq!(h.writes(), 0);
}

on_both!(async fn no_instance_yet_is_pending_then_applied_once_named);
async fn no_instance_yet_is_pending_then_applied_once_named(backend: Backend) {
    let h = Harness::new(backend);
    h.write(
        "r.yaml",
        &(app("one", 3, NESTING) + &machine("0", None, &["one"], "")),
    );
    h.pass().await;
    assert_eq!(h.status(Kind::Machine, "0").phase, Phase::Pending);
    h.lxd.empty_instance("i0");
    h.write(
        "r.yaml",
        &(app("one", 3, NESTING) + &machine("0", Some("i0"), &["one"], "")),
    );
    h.pass().await;
    assert_eq!(h.status(Kind::Machine, "0").phase, Phase::Applied);
    assert_eq!(
        h.profiles("i0"),
        strings(&["default", "juju-m", "juju-m-one-3"])
    );
}

on_both!(async fn missing_instance_or_rejected_profile_is_an_error_and_the_others_converge);
async fn missing_instance_or_rejected_profile_is_an_error_and_the_others_converge(
    backend: Backend,
) {
    let h = Harness::new(backend);
    h.lxd.empty_instance("i0");
    h.lxd.empty_instance("i2");
    // Forced past Juju's rules, but LXD itself refuses the value.
    let bad = "  force: true\n  lxdProfile:\n    config: {security.nesting: maybe}\n";
    let r = app("one", 3, NESTING)
        + &app("bad", 1, bad)
        + &machine("0", Some("i0"), &["one"], "")
        + &machine("1", Some("ghost"), &["one"], "")
        + &machine("2", Some("i2"), &["bad"], "");
    h.write("r.yaml", &r);
    h.pass().await;
    assert_eq!(
        h.profiles("i0"),
        strings(&["default", "juju-m", "juju-m-one-3"])
    );
    let ghost = h.status(Kind::Machine, "1");
    assert_eq!(ghost.phase, Phase::Error);
    assert_eq!(
        ghost.message,
        "cannot upgrade machine's lxd profile: instance \"ghost\" not found"
    );
    let bad = h.status(Kind::Machine, "2");
    assert_eq!(bad.phase, Phase::Error);
    assert!(
        bad.message
            .starts_with("cannot upgrade machine's lxd profile: "),
        "{}",
        bad.message
    );
    assert!(
        bad.message
            .contains("Invalid value for a boolean \"maybe\""),
        "{}",
        bad.message
    );
    assert_eq!(h.profiles("i2"), strings(&["default"]));
}

on_both!(async fn manual_drift_is_corrected_and_counted_and_dry_run_only_reports_it);
async fn manual_drift_is_corrected_and_counted_and_dry_run_only_reports_it(backend: Backend) {
    let h = Harness::one_machine(backend);
    h.pass().await;
    let want = strings(&["default", "juju-m", "juju-m-one-3"]);

    // Reordered by hand; dry run reports and leaves it.
    h.lxd
        .lxc(&["profile", "assign", "i0", "default,juju-m-one-3,juju-m"]);
    h.pass_with(true, None).await;
    let s = h.status(Kind::Machine, "0");
    assert_eq!(s.phase, Phase::Drifted);
    assert_eq!(
        h.profiles("i0"),
        strings(&["default", "juju-m-one-3", "juju-m"])
    );
    assert_eq!(s.drift.as_ref().map(|d| d.count), Some(1));
    // A real pass corrects it.
    h.pass().await;
    assert_eq!(h.profiles("i0"), want);
    assert_eq!(h.status(Kind::Machine, "0").phase, Phase::Applied);

    // A profile removed by hand.
    h.lxd.lxc(&["profile", "remove", "i0", "juju-m-one-3"]);
    h.pass().await;
    assert_eq!(h.profiles("i0"), want);
    let s = h.status(Kind::Machine, "0");
    assert!(s.drift.as_ref().is_some_and(|d| d.count >= 2), "{s:?}");

    // The content of an owned profile edited by hand.
    h.lxd.lxc(&[
        "profile",
        "set",
        "juju-m-one-3",
        "security.nesting",
        "false",
    ]);
    h.pass().await;
    assert_eq!(
        h.lxd.profile_json("juju-m-one-3")["config"]["security.nesting"],
        "true"
    );
    let s = h.status(Kind::Machine, "0");
    assert!(
        s.drift
            .as_ref()
            .is_some_and(|d| d.last.contains("profile content differs")),
        "{s:?}"
    );
}

on_both!(async fn a_profile_without_the_owner_key_is_never_rewritten_or_deleted);
async fn a_profile_without_the_owner_key_is_never_rewritten_or_deleted(backend: Backend) {
    let h = Harness::new(backend);
    h.lxd.empty_instance("i0");
    h.lxd.lxc(&["profile", "create", "juju-m-one-3"]);
    h.lxd.lxc(&[
        "profile",
        "set",
        "juju-m-one-3",
        "security.nesting",
        "false",
    ]);
    h.lxd.lxc(&["profile", "create", "juju-m-old-1"]);
    h.write(
        "r.yaml",
        &(app("one", 3, NESTING) + &machine("0", Some("i0"), &["one"], "")),
    );
    h.pass().await;
    assert_eq!(
        h.lxd.profile_json("juju-m-one-3")["config"]["security.nesting"],
        "false"
    );
    assert!(h.has_profile("juju-m-old-1"), "not ours: not deleted");
    let s = h.status(Kind::Machine, "0");
    assert_eq!(s.phase, Phase::Error);
    assert!(s.message.contains("juju-m-one-3"), "{}", s.message);
    // Not attached either: the instance keeps its list; the only write is the model
    // profile it lacked.
    assert_eq!(h.profiles("i0"), strings(&["default"]));
    assert_eq!(h.writes(), 1);
}

on_both!(async fn a_hand_made_profile_mounting_the_host_is_never_attached);
/// Reproduction: a hand-made `juju-m-one-9` (no owner key) mounting the host's `/`, then
/// revision 9 in the resources. It used to be attached to every machine.
async fn a_hand_made_profile_mounting_the_host_is_never_attached(backend: Backend) {
    let h = Harness::new(backend);
    h.lxd.empty_instance("i0");
    h.lxd.empty_instance("i1");
    let two = |rev| {
        app("one", rev, NESTING)
            + &machine("0", Some("i0"), &["one"], "")
            + &machine("1", Some("i1"), &["one"], "")
    };
    h.write("r.yaml", &two(3));
    h.pass().await;
    let converged = strings(&["default", "juju-m", "juju-m-one-3"]);
    assert_eq!(h.profiles("i0"), converged);
    h.lxd.lxc(&["profile", "create", "juju-m-one-9"]);
    h.lxd.lxc(&[
        "profile",
        "device",
        "add",
        "juju-m-one-9",
        "host",
        "disk",
        "source=/",
        "path=/mnt/host",
    ]);
    let before = h.writes();
    h.write("r.yaml", &two(9));
    h.pass().await;
    assert_eq!(h.writes(), before, "no write at all");
    for (name, instance) in [("0", "i0"), ("1", "i1")] {
        assert_eq!(h.profiles(instance), converged, "{instance} keeps its list");
        let s = h.status(Kind::Machine, name);
        assert_eq!(s.phase, Phase::Error);
        assert!(s.message.contains("juju-m-one-9"), "{}", s.message);
        assert!(s.message.contains("not attached"), "{}", s.message);
    }
    // diff reports it (exit 2) and changes nothing.
    let out = h
        .lxd
        .mutater()
        .args(["diff", "--resources", h.resources.path().to_str().unwrap()])
        .args(["--lxd-project", h.lxd.name()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("! profile juju-m-one-9 is not this controller's"),
        "{stdout}"
    );
}

on_both!(async fn two_resources_naming_one_instance_write_nothing_to_it);
/// Machines in two namespaces naming one instance: both Error, naming each other, and
/// the instance is not written (it used to end with whichever came last).
async fn two_resources_naming_one_instance_write_nothing_to_it(backend: Backend) {
    let h = Harness::new(backend);
    h.lxd.empty_instance("i0");
    let other =
        machine("0", Some("i0"), &["one"], "").replace("namespace: m}", "namespace: other}");
    let other_app = app("one", 3, NESTING).replace("namespace: m}", "namespace: other}");
    h.write(
        "r.yaml",
        &(app("one", 3, NESTING) + &machine("0", Some("i0"), &["one"], "") + &other_app + &other),
    );
    h.pass().await;
    assert_eq!(h.profiles("i0"), strings(&["default"]));
    assert_eq!(h.writes(), 0);
    let s = h.status(Kind::Machine, "0");
    assert_eq!(s.phase, Phase::Error);
    assert!(s.message.contains("Machine/other/0"), "{}", s.message);
    let theirs = StatusFiles::open(h.state.path())
        .unwrap()
        .get(&ResourceKey::new(Kind::Machine, "other", "0"))
        .expect("a status for other/0");
    assert!(theirs.message.contains("Machine/m/0"), "{}", theirs.message);
}

on_both!(async fn a_subordinate_profile_follows_its_principal_and_leaves_with_the_relation);
/// SPEC §4, subordinates: the subordinate's profile goes on every instance that runs one
/// of its principals, right after the first principal's; emptying `subordinateTo` takes
/// it off, and the unused profile goes.
async fn a_subordinate_profile_follows_its_principal_and_leaves_with_the_relation(
    backend: Backend,
) {
    let h = Harness::new(backend);
    h.lxd.empty_instance("i0");
    h.lxd.empty_instance("i1");
    let tel = |to: &str| {
        app(
            "tel",
            2,
            &format!(
                "  subordinate: true\n  subordinateTo: [{to}]\n  lxdProfile:\n    config: {{security.privileged: true}}\n"
            ),
        )
    };
    let rest = app("one", 3, NESTING)
        + &app("two", 5, NESTING)
        + &machine("0", Some("i0"), &["one", "two"], "")
        + &machine("1", Some("i1"), &["two"], "");
    h.write("r.yaml", &(tel("one") + &rest));
    h.pass().await;
    assert_eq!(
        h.profiles("i0"),
        strings(&[
            "default",
            "juju-m",
            "juju-m-one-3",
            "juju-m-tel-2",
            "juju-m-two-5"
        ])
    );
    assert_eq!(
        h.profiles("i1"),
        strings(&["default", "juju-m", "juju-m-two-5"]),
        "no principal of tel on i1"
    );

    h.write("r.yaml", &(tel("") + &rest));
    h.pass().await;
    assert_eq!(
        h.profiles("i0"),
        strings(&["default", "juju-m", "juju-m-one-3", "juju-m-two-5"])
    );
    assert!(
        !h.has_profile("juju-m-tel-2"),
        "the unused profile is deleted"
    );
}

on_both!(async fn the_model_profile_it_made_goes_with_the_last_resource_and_one_it_did_not_stays);
/// SPEC §4, the model profile's lifecycle: `juju-m`, made by the controller, is deleted
/// once no resource of namespace `m` remains and LXD reports it unused (Juju leaves it
/// behind); `juju-other`, made by hand, is never touched.
async fn the_model_profile_it_made_goes_with_the_last_resource_and_one_it_did_not_stays(
    backend: Backend,
) {
    let h = Harness::one_machine(backend);
    h.lxd.lxc(&["profile", "create", "juju-other"]);
    h.pass().await;
    assert!(h.has_profile("juju-m"));
    h.write("r.yaml", &app("one", 3, NESTING));
    h.pass().await;
    assert!(
        h.has_profile("juju-m"),
        "the instance still uses it: LXD reports it in use"
    );
    // The instance leaves the model (by hand, as Juju's provider does on release).
    h.lxd.lxc(&["profile", "assign", "i0", "default"]);
    h.write("r.yaml", "");
    h.pass().await;
    assert!(
        !h.has_profile("juju-m"),
        "made by us, unused, no resource left"
    );
    assert!(!h.has_profile("juju-m-one-3"));
    assert!(h.has_profile("juju-other"), "not ours: never touched");
}

on_both!(fn a_project_sharing_the_default_projects_profiles_is_refused);
/// A project without profiles of its own (features.profiles=false) shares the default
/// project's: refused with the reason, nothing written, unless allowed.
fn a_project_sharing_the_default_projects_profiles_is_refused(backend: Backend) {
    let name = format!("t-shared-{}", std::process::id());
    let cli = |args: &[&str]| support::cli_global(backend, args);
    cli(&["project", "create", &name, "-c", "features.profiles=false"]);
    struct Gone(Backend, String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = support::try_cli_global(self.0, &["project", "delete", &self.1]);
        }
    }
    let _gone = Gone(backend, name.clone());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.yaml"), app("one", 3, NESTING)).unwrap();
    let before = cli(&["profile", "list", "--project", "default", "-f", "csv"]);
    let out = support::mutater(backend)
        .args(["run", "--once", "--resources", dir.path().to_str().unwrap()])
        .args([
            "--lxd-project",
            &name,
            "--state-dir",
            dir.path().join("s").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("features.profiles=false"), "{err}");
    assert!(err.contains("--allow-shared-profiles"), "{err}");
    let after = cli(&["profile", "list", "--project", "default", "-f", "csv"]);
    assert_eq!(
        before, after,
        "nothing written to the default project's profiles"
    );
}

on_both!(async fn a_list_that_drops_the_instances_root_disk_is_refused_by_incus_only);
/// The root disk comes from an operator's profile that the expected list drops. LXD 5.0
/// lets a stopped instance lose its root disk; Incus refuses the PATCH ("Invalid root disk
/// device"), so there the resource is Error with Incus' reason and the instance keeps its
/// list (the PATCH is atomic).
async fn a_list_that_drops_the_instances_root_disk_is_refused_by_incus_only(backend: Backend) {
    let h = Harness::new(backend);
    h.lxd.lxc(&["profile", "create", "disk"]);
    let root = ["root", "disk", "path=/", "pool=default"];
    h.lxd
        .lxc(&[&["profile", "device", "add", "disk"][..], &root].concat());
    h.lxd
        .lxc(&["profile", "device", "remove", "default", "root"]);
    h.lxd.lxc(&[
        "init",
        "--empty",
        "i0",
        "--profile",
        "default",
        "--profile",
        "disk",
    ]);
    h.write(
        "r.yaml",
        &(app("one", 3, NESTING) + &machine("0", Some("i0"), &["one"], "")),
    );
    h.pass().await;
    let s = h.status(Kind::Machine, "0");
    match backend {
        Backend::Lxd => {
            assert_eq!(s.phase, Phase::Applied, "{}", s.message);
            assert_eq!(
                h.profiles("i0"),
                strings(&["default", "juju-m", "juju-m-one-3"])
            );
        }
        Backend::Incus => {
            assert_eq!(s.phase, Phase::Error);
            assert_eq!(
                s.message,
                "cannot upgrade machine's lxd profile: Invalid root disk device: No root device could be found"
            );
            assert_eq!(h.profiles("i0"), strings(&["default", "disk"]));
        }
    }
    // The project's clean-up removes the root disk of `default`: give it back.
    h.lxd
        .lxc(&[&["profile", "device", "add", "default"][..], &root].concat());
}

on_both!(async fn a_machine_naming_a_missing_application_is_an_error_and_lxd_is_untouched);
async fn a_machine_naming_a_missing_application_is_an_error_and_lxd_is_untouched(backend: Backend) {
    let h = Harness::new(backend);
    h.lxd.empty_instance("i0");
    h.write("r.yaml", &machine("0", Some("i0"), &["ghost"], ""));
    h.pass().await;
    let s = h.status(Kind::Machine, "0");
    assert_eq!(s.phase, Phase::Error);
    assert_eq!(
        s.message,
        "cannot upgrade machine's lxd profile: application \"ghost\" not found in model \"m\""
    );
    assert_eq!(h.writes(), 0);
    assert_eq!(h.profiles("i0"), strings(&["default"]));
}

on_both!(fn once_and_diff_exit_codes_through_the_binary);
/// The binary's `--once` and `diff` exit codes, and `get`.
fn once_and_diff_exit_codes_through_the_binary(backend: Backend) {
    let h = Harness::one_machine(backend);
    let res = h.resources.path().to_str().unwrap();
    let diff = || {
        h.lxd
            .mutater()
            .args(["diff", "--resources", res, "--lxd-project", h.lxd.name()])
            .output()
            .unwrap()
    };
    let out = diff();
    assert_eq!(out.status.code(), Some(2), "drift before the first pass");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("expected: [default, juju-m, juju-m-one-3]"),
        "{stdout}"
    );
    assert_eq!(
        h.profiles("i0"),
        strings(&["default"]),
        "diff changes nothing"
    );
    let state = h.state.path().to_str().unwrap();
    let once = || {
        h.lxd
            .mutater()
            .args(["run", "--once", "--resources", res])
            .args(["--lxd-project", h.lxd.name(), "--state-dir", state])
            .output()
            .unwrap()
    };
    let out = once();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(diff().status.code(), Some(0));
    // An owned profile that nothing expects and nothing uses: diff shows its deletion
    // (exit 2) and deletes nothing; run deletes it.
    h.lxd.lxc(&["profile", "create", "juju-m-old-1"]);
    h.lxd.lxc(&[
        "profile",
        "set",
        "juju-m-old-1",
        "user.lxd-mutater.owner=lxd-mutater",
    ]);
    let out = diff();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("  - delete profile juju-m-old-1 ("),
        "{stdout}"
    );
    assert!(h.lxd.try_lxc(&["profile", "show", "juju-m-old-1"]).is_ok());
    assert_eq!(once().status.code(), Some(0));
    assert!(h.lxd.try_lxc(&["profile", "show", "juju-m-old-1"]).is_err());
    assert_eq!(diff().status.code(), Some(0));
    let get = h
        .lxd
        .mutater()
        .args(["get", "machines", "--state-dir", state])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&get.stdout);
    assert!(
        table.starts_with("NAMESPACE   NAME   INSTANCE   PHASE     PROFILES"),
        "{table}"
    );
    assert!(
        table.contains("Applied   default,juju-m,juju-m-one-3"),
        "{table}"
    );
    // A usage error is 1, never the 2 of drift; a log level that is not one is refused.
    let out = h
        .lxd
        .mutater()
        .args(["diff", "--resources", res, "--lxd-projekt", h.lxd.name()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = h
        .lxd
        .mutater()
        .args([
            "run",
            "--once",
            "--resources",
            res,
            "--log-level",
            "verbose",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"verbose\" is not a log level"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A file that does not load: diff and --once exit 1 and name it.
    h.write("broken.yaml", "apiVersion: [\n");
    let out = diff();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("broken.yaml:"), "{stdout}");
    let out = once();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("broken.yaml:"));
    std::fs::remove_file(h.resources.path().join("broken.yaml")).unwrap();
    // An error makes --once exit 1 with one line for the resource.
    h.write(
        "r.yaml",
        &(app("one", 3, NESTING) + &machine("0", Some("i0"), &["ghost"], "")),
    );
    let out = once();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Machine m/0: Error cannot upgrade machine's lxd profile: application \"ghost\" not found in model \"m\""
    );
}

on_both!(fn a_project_that_does_not_exist_is_named_as_such);
fn a_project_that_does_not_exist_is_named_as_such(backend: Backend) {
    let out = support::mutater(backend)
        .args([
            "diff",
            "--resources",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples"),
        ])
        .args(["--lxd-project", "no-such-project-here"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"no-such-project-here\""), "{err}");
}

on_both!(fn get_watch_prints_each_status_change);
/// `get machines --watch` prints the listing, then a line each time a status changes,
/// within a second of the write; `-o wide` adds the drift count and the message.
fn get_watch_prints_each_status_change(backend: Backend) {
    use std::io::BufRead;
    let h = Harness::one_machine(backend);
    let state = h.state.path().to_str().unwrap();
    let res = h.resources.path().to_str().unwrap();
    let mut watch = h
        .lxd
        .mutater()
        .args([
            "get",
            "machines",
            "--watch",
            "-o",
            "wide",
            "--state-dir",
            state,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = watch.stdout.take().unwrap();
    let _watch = Kill(watch);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send((std::time::Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let header = rx.recv_timeout(Duration::from_secs(5)).expect("the header");
    assert!(header.1.starts_with("NAMESPACE"), "{}", header.1);
    assert!(
        header.1.contains("DRIFT") && header.1.contains("MESSAGE"),
        "{}",
        header.1
    );
    let out = h
        .lxd
        .mutater()
        .args(["run", "--once", "--resources", res, "--state-dir", state])
        .args(["--lxd-project", h.lxd.name()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let written = std::time::Instant::now();
    let applied = loop {
        let (at, line) = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("a line for the change");
        if line.contains("Applied") {
            break (at, line);
        }
    };
    assert!(applied.1.starts_with("m "), "{}", applied.1);
    assert!(
        applied.1.contains("default,juju-m,juju-m-one-3"),
        "{}",
        applied.1
    );
    let late = applied.0.saturating_duration_since(written);
    eprintln!("get --watch printed the change {late:?} after run --once ended");
    assert!(late < Duration::from_secs(1), "{late:?}");
}
