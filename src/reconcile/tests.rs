//! The worker and the clean-up against the in-memory LXD, under tokio's paused clock:
//! what LXD ends up holding, which requests it took, and what the status says.

use std::time::Duration;

use crate::lxd::{EventNotice, LxdError};
use crate::queue::BackoffConfig;
use crate::resource::{Kind, Phase, ResourceKey};
use crate::status::StatusStore;
use crate::testing::{MemLxd, app, machine, nesting, pipeline, resources};

use super::{ReconcileError, WorkKey};

fn key(name: &str) -> ResourceKey {
    ResourceKey::new(Kind::Machine, "m", name)
}

fn writes(lxd: &MemLxd) -> Vec<String> {
    lxd.requests()
        .into_iter()
        .filter(|r| r.is_write())
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

fn listings(lxd: &MemLxd) -> usize {
    lxd.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/1.0/instances?recursion=1")
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_machine_is_converged_with_the_minimum_of_writes_and_reported_applied() {
    let lxd = MemLxd::new();
    lxd.add_instance("i0", &["default"]);
    let (p, status) = pipeline(&lxd, |_| {});
    p.load(resources(&(app("one", 3) + &machine("0", "i0", &["one"]))));
    p.relist().await.unwrap();
    p.enqueue_all();
    p.worker.clone().run(true).await;

    assert_eq!(
        lxd.instance_profiles("i0").unwrap(),
        ["default", "juju-m", "juju-m-one-3"]
    );
    assert_eq!(
        writes(&lxd),
        [
            "POST /1.0/profiles",
            "POST /1.0/profiles",
            "PATCH /1.0/instances/i0"
        ]
    );
    let s = p.report.last(&key("0")).unwrap();
    assert_eq!(s.phase, Phase::Applied);
    assert_eq!(s.profiles, ["default", "juju-m", "juju-m-one-3"]);
    assert_eq!(s.conditions[0].status, "True");
    // One status stored: Applying, superseded by Applied within the writer's gathering
    // window, never was.
    assert!(p.report.flush(Duration::from_secs(5)));
    let before = status.written.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(before, 1);
    // None on a pass in sync.
    lxd.clear_requests();
    p.enqueue_all();
    p.worker.clone().run(true).await;
    assert_eq!(writes(&lxd), Vec::<String>::new());
    assert!(p.report.flush(Duration::from_secs(5)));
    assert_eq!(
        status.written.load(std::sync::atomic::Ordering::SeqCst),
        before
    );
}

/// Juju's case 10, the retries: a missing instance is retried with backoff, so the
/// requests over a window grow with its logarithm, not with its length; the other machine
/// converges.
#[tokio::test(start_paused = true)]
async fn a_missing_instance_is_retried_with_growing_delays_not_in_a_loop() {
    let lxd = MemLxd::new();
    lxd.add_instance("i0", &["default"]);
    let (p, _) = pipeline(&lxd, |o| {
        o.backoff = BackoffConfig {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(60),
        };
    });
    p.load(resources(
        &(app("one", 3) + &machine("0", "i0", &["one"]) + &machine("1", "ghost", &["one"])),
    ));
    p.relist().await.unwrap();
    lxd.clear_requests();
    p.enqueue_all();
    let workers = tokio::spawn(p.worker.clone().run(false));
    // Retries at about 0.1, 0.3, 0.7, 1.5 s (each confirms with a listing), then 3.1 s.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    p.queue.shutdown();
    workers.await.unwrap();
    assert_eq!(listings(&lxd), 5, "{:?}", lxd.requests());
    assert_eq!(p.queue.failures(&WorkKey::Resource(key("1"))), 5);
    let s = p.report.last(&key("1")).unwrap();
    assert_eq!(
        (s.phase, s.message.as_str()),
        (
            Phase::Error,
            "cannot upgrade machine's lxd profile: instance \"ghost\" not found"
        )
    );
    assert_eq!(
        lxd.instance_profiles("i0").unwrap(),
        ["default", "juju-m", "juju-m-one-3"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_reconcile_that_hangs_is_abandoned_at_the_timeout() {
    let lxd = MemLxd::new();
    lxd.add_instance("i0", &["default"]);
    let (p, _) = pipeline(&lxd, |o| o.reconcile_timeout = Duration::from_secs(5));
    p.load(resources(&(app("one", 3) + &machine("0", "i0", &["one"]))));
    p.relist().await.unwrap();
    lxd.hang("PATCH");
    let started = tokio::time::Instant::now();
    let r = p.worker.process(&WorkKey::Resource(key("0"))).await;
    assert!(matches!(r, Err(ReconcileError::Timeout(_))), "{r:?}");
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    lxd.heal();
    let r = p.worker.process(&WorkKey::Resource(key("0"))).await;
    assert_eq!(r.unwrap(), Some(Phase::Applied));
}

#[tokio::test(start_paused = true)]
async fn a_refused_write_is_an_error_in_jujus_words_and_the_list_is_kept() {
    let lxd = MemLxd::new();
    lxd.add_instance("i0", &["default"]);
    let (p, _) = pipeline(&lxd, |_| {});
    p.load(resources(&(app("one", 3) + &machine("0", "i0", &["one"]))));
    p.relist().await.unwrap();
    lxd.fail_next("PATCH", 1, || LxdError::Rejected {
        status: 500,
        message: "Failed to start device \"kvm\"".into(),
    });
    let r = p.worker.process(&WorkKey::Resource(key("0"))).await;
    assert!(matches!(r, Err(ReconcileError::Lxd(_))), "{r:?}");
    let s = p.report.last(&key("0")).unwrap();
    assert_eq!(
        s.message,
        "cannot upgrade machine's lxd profile: Failed to start device \"kvm\""
    );
    assert_eq!(s.profiles, ["default"]);
    assert_eq!(lxd.instance_profiles("i0").unwrap(), ["default"]);
}

#[tokio::test(start_paused = true)]
async fn dry_run_reports_drift_and_writes_nothing() {
    let lxd = MemLxd::new();
    lxd.add_instance("i0", &["default"]);
    let (p, _) = pipeline(&lxd, |o| o.dry_run = true);
    p.load(resources(&(app("one", 3) + &machine("0", "i0", &["one"]))));
    p.relist().await.unwrap();
    lxd.add_profile("juju-m-gone-1", nesting(true));
    p.relist().await.unwrap();
    p.enqueue_all();
    p.worker.clone().run(true).await;
    assert_eq!(writes(&lxd), Vec::<String>::new());
    assert_eq!(p.report.last(&key("0")).unwrap().phase, Phase::Drifted);
}

#[tokio::test(start_paused = true)]
async fn a_manual_drift_reaches_the_worker_through_one_event_and_our_echo_costs_nothing() {
    let lxd = MemLxd::new();
    lxd.add_instance("i0", &["default"]);
    let (p, _) = pipeline(&lxd, |_| {});
    p.load(resources(&(app("one", 3) + &machine("0", "i0", &["one"]))));
    let mut events = lxd.events();
    assert_eq!(events.recv().await, Some(EventNotice::Connected));
    p.relist().await.unwrap();
    p.worker
        .process(&WorkKey::Resource(key("0")))
        .await
        .unwrap();
    // Our own three writes come back as events: recognised, no GET, nothing enqueued.
    lxd.clear_requests();
    for _ in 0..3 {
        let Some(EventNotice::Lifecycle(e)) = events.recv().await else {
            panic!("an event")
        };
        let affected = p.feed.on_event(&e).await.unwrap();
        assert!(affected.keys.is_empty() && !affected.everything, "{e:?}");
    }
    assert_eq!(lxd.requests(), vec![]);
    // An operator's change: one GET, the one machine affected, corrected with one PATCH.
    lxd.set_profiles_by_hand("i0", &["default"]);
    let Some(EventNotice::Lifecycle(e)) = events.recv().await else {
        panic!("an event")
    };
    let affected = p.feed.on_event(&e).await.unwrap();
    assert_eq!(affected.keys, [key("0")]);
    assert_eq!(
        p.worker
            .process(&WorkKey::Resource(key("0")))
            .await
            .unwrap(),
        Some(Phase::Applied)
    );
    assert_eq!(
        lxd.requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect::<Vec<_>>(),
        ["GET /1.0/instances/i0", "PATCH /1.0/instances/i0"]
    );
    let s = p.report.last(&key("0")).unwrap();
    assert_eq!(s.drift.map(|d| d.count), Some(1));
}

#[tokio::test(start_paused = true)]
async fn the_clean_up_deletes_only_owned_unused_unexpected_profiles_and_never_before_loaded() {
    let lxd = MemLxd::new();
    lxd.add_profile("juju-m-one-3", nesting(true));
    lxd.add_profile("juju-m-old-1", nesting(true));
    lxd.add_profile("juju-m-theirs-1", nesting(false));
    lxd.add_profile("juju-m", nesting(true));
    lxd.add_instance("i0", &["default", "juju-m", "juju-m-one-3"]);
    let (p, _) = pipeline(&lxd, |_| {});
    // No listing yet: nothing is planned, nothing deleted.
    p.load(resources(&(app("one", 3) + &machine("0", "i0", &["one"]))));
    assert!(p.worker.cleanup().is_empty());
    p.worker.process(&WorkKey::Collect).await.unwrap();
    assert_eq!(writes(&lxd), Vec::<String>::new());

    p.relist().await.unwrap();
    assert_eq!(
        p.worker.cleanup().to_string(),
        "  - delete profile juju-m-old-1 (owned, unused, expected by no resource)\n"
    );
    p.worker.process(&WorkKey::Collect).await.unwrap();
    assert_eq!(writes(&lxd), ["DELETE /1.0/profiles/juju-m-old-1"]);
    assert!(lxd.profile("juju-m-theirs-1").is_some());
    assert!(p.worker.cleanup().is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_clean_up_keeps_a_profile_that_lxd_says_is_in_use_again() {
    let lxd = MemLxd::new();
    lxd.add_profile("juju-m-old-1", nesting(true));
    lxd.add_instance("i0", &["default"]);
    let (p, _) = pipeline(&lxd, |_| {});
    p.load(vec![]);
    p.relist().await.unwrap();
    // Taken by an operator after the listing: LXD refuses, the profile stays.
    lxd.set_profiles_by_hand("i0", &["default", "juju-m-old-1"]);
    p.worker.process(&WorkKey::Collect).await.unwrap();
    assert_eq!(writes(&lxd), ["DELETE /1.0/profiles/juju-m-old-1"]);
    assert!(lxd.profile("juju-m-old-1").is_some());
    assert!(p.store.observed().profile("juju-m-old-1").is_some());
}

/// A deletion whose answer was lost (LXD did it, the connection was reset before the
/// answer came) is read back: the next clean-up, which may run before the deletion's
/// event is handled, does not send it again.
#[tokio::test(start_paused = true)]
async fn a_deletion_whose_answer_is_lost_is_read_back_not_sent_again() {
    let lxd = MemLxd::new();
    lxd.add_profile("juju-m-old-1", nesting(true));
    lxd.add_instance("i0", &["default"]);
    let (p, _) = pipeline(&lxd, |_| {});
    p.load(vec![]);
    p.relist().await.unwrap();
    lxd.lose_answers_next("DELETE", 1);
    p.worker.process(&WorkKey::Collect).await.unwrap();
    assert!(lxd.profile("juju-m-old-1").is_none(), "LXD deleted it");
    assert!(p.store.observed().profile("juju-m-old-1").is_none());
    p.worker.process(&WorkKey::Collect).await.unwrap();
    let asked: Vec<String> = lxd
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/1.0/profiles/"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        asked,
        [
            "DELETE /1.0/profiles/juju-m-old-1",
            "GET /1.0/profiles/juju-m-old-1"
        ]
    );
}

// The safety rules (README "Promises"), each counting the LXD writes it caused.

fn container(name: &str, namespace: &str, instance: &str) -> String {
    format!(
        "apiVersion: lxdmutater.dev/v1alpha1\nkind: Container\nmetadata: {{name: \"{name}\", namespace: {namespace}}}\nspec: {{machine: \"0\", instance: {instance}, applications: []}}\n---\n"
    )
}

#[tokio::test(start_paused = true)]
async fn a_hand_made_profile_that_differs_is_never_attached() {
    let lxd = MemLxd::new();
    lxd.add_profile("juju-m", nesting(true));
    lxd.add_instance("i0", &["default", "juju-m"]);
    // Made by hand, no owner key, other content (a disk mounting the host's /).
    let mut evil = crate::lxd::ProfileContent::default();
    evil.devices.insert(
        "host".into(),
        [("type", "disk"), ("source", "/"), ("path", "/mnt")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    lxd.add_profile("juju-m-one-9", evil);
    let (p, _) = pipeline(&lxd, |_| {});
    p.load(resources(&(app("one", 9) + &machine("0", "i0", &["one"]))));
    p.relist().await.unwrap();
    let r = p.worker.process(&WorkKey::Resource(key("0"))).await;
    assert_eq!(r.unwrap(), Some(Phase::Error));
    assert_eq!(writes(&lxd), Vec::<String>::new());
    assert_eq!(lxd.instance_profiles("i0").unwrap(), ["default", "juju-m"]);
    let s = p.report.last(&key("0")).unwrap();
    assert!(s.message.contains("juju-m-one-9"), "{}", s.message);
    assert!(s.message.contains("not attached"), "{}", s.message);
}

#[tokio::test(start_paused = true)]
async fn two_resources_naming_one_instance_are_both_errors_and_the_instance_is_untouched() {
    let lxd = MemLxd::new();
    lxd.add_instance("i0", &["default"]);
    let (p, _) = pipeline(&lxd, |_| {});
    let both = app("one", 3) + &machine("0", "i0", &["one"]) + &container("0-lxd-0", "other", "i0");
    p.load(resources(&both));
    p.relist().await.unwrap();
    p.enqueue_all();
    p.worker.clone().run(true).await;
    assert_eq!(writes(&lxd), Vec::<String>::new());
    let m = p.report.last(&key("0")).unwrap();
    let c = p
        .report
        .last(&ResourceKey::new(Kind::Container, "other", "0-lxd-0"))
        .unwrap();
    assert_eq!((m.phase, c.phase), (Phase::Error, Phase::Error));
    assert!(
        m.message.contains("Container/other/0-lxd-0"),
        "{}",
        m.message
    );
    assert!(c.message.contains("Machine/m/0"), "{}", c.message);
    // The other one goes: the Machine is among the keys to reconcile again, and is
    // managed again.
    let ckey = ResourceKey::new(Kind::Container, "other", "0-lxd-0");
    assert_eq!(p.store.remove(&ckey), [key("0"), ckey]);
    let r = p.worker.process(&WorkKey::Resource(key("0"))).await;
    assert_eq!(r.unwrap(), Some(Phase::Applied));
}

#[tokio::test(start_paused = true)]
async fn the_claim_is_recorded_by_the_same_patch_and_another_owners_instance_is_not_touched() {
    let lxd = MemLxd::new();
    lxd.add_instance("i0", &["default"]);
    lxd.add_instance("i1", &["default"]);
    lxd.set_instance_config_by_hand("i1", "user.lxd-mutater.owner", Some("green"));
    lxd.set_instance_config_by_hand("i1", "user.lxd-mutater.resource", Some("Machine/m/1"));
    let (p, _) = pipeline(&lxd, |o| o.owner = "blue".into());
    let yaml = app("one", 3) + &machine("0", "i0", &["one"]) + &machine("1", "i1", &["one"]);
    p.load(resources(&yaml));
    p.relist().await.unwrap();
    p.enqueue_all();
    p.worker.clone().run(true).await;
    let config = lxd.instance_config("i0").unwrap();
    assert_eq!(
        config.get("user.lxd-mutater.owner").map(String::as_str),
        Some("blue")
    );
    assert_eq!(
        config.get("user.lxd-mutater.resource").map(String::as_str),
        Some("Machine/m/0")
    );
    assert_eq!(
        writes(&lxd)
            .iter()
            .filter(|w| w.starts_with("PATCH"))
            .count(),
        1,
        "one PATCH, for i0 only"
    );
    assert_eq!(lxd.instance_profiles("i1").unwrap(), ["default"]);
    let s = p.report.last(&key("1")).unwrap();
    assert!(
        s.message.contains("claimed by another controller (green"),
        "{}",
        s.message
    );
}

#[tokio::test(start_paused = true)]
async fn a_profile_is_ours_by_its_recorded_owner_not_by_its_name_or_the_key_alone() {
    let lxd = MemLxd::new();
    let stamped = |owner: &str, namespace: &str| {
        let mut c = nesting(false);
        c.config
            .insert("user.lxd-mutater.owner".into(), owner.into());
        c.config
            .insert("user.lxd-mutater.namespace".into(), namespace.into());
        c.config
            .insert("user.lxd-mutater.application".into(), "x-app".into());
        c.config
            .insert("user.lxd-mutater.revision".into(), "1".into());
        c
    };
    // Another controller's, and one of namespace m-x whose name parses as m's too.
    lxd.add_profile("juju-m-green-1", stamped("green", "m"));
    lxd.add_profile("juju-m-x-app-1", stamped("blue", "m-x"));
    lxd.add_profile("juju-m-mine-1", stamped("blue", "m"));
    let (p, _) = pipeline(&lxd, |o| {
        o.owner = "blue".into();
        o.namespace = Some("m".into());
    });
    p.load(vec![]);
    p.relist().await.unwrap();
    p.worker.process(&WorkKey::Collect).await.unwrap();
    assert_eq!(writes(&lxd), ["DELETE /1.0/profiles/juju-m-mine-1"]);
}

#[tokio::test(start_paused = true)]
async fn a_content_rewrite_reads_the_profile_fresh_and_a_race_backs_off() {
    let lxd = MemLxd::new();
    lxd.add_profile("juju-m", nesting(true));
    let mut drifted = nesting(true);
    drifted
        .config
        .insert("security.nesting".into(), "false".into());
    lxd.add_profile("juju-m-one-3", drifted);
    lxd.add_instance("i0", &["default", "juju-m", "juju-m-one-3"]);
    let (p, _) = pipeline(&lxd, |_| {});
    p.load(resources(&(app("one", 3) + &machine("0", "i0", &["one"]))));
    p.relist().await.unwrap();
    lxd.clear_requests();
    // Someone else writes between our read and our PUT: LXD answers 412.
    lxd.fail_next("PUT", 1, || LxdError::Conflict {
        message: "ETag doesn't match".into(),
    });
    p.enqueue_all();
    let workers = tokio::spawn(p.worker.clone().run(false));
    let k = WorkKey::Resource(key("0"));
    while p.queue.failures(&k) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        lxd.requests()
            .iter()
            .take(2)
            .map(|r| format!("{} {}", r.method, r.path))
            .collect::<Vec<_>>(),
        [
            "GET /1.0/profiles/juju-m-one-3",
            "PUT /1.0/profiles/juju-m-one-3"
        ]
    );
    // Retried after the backoff, not at once: then rewritten.
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.queue.shutdown();
    workers.await.unwrap();
    assert_eq!(
        lxd.profile("juju-m-one-3").unwrap().config["security.nesting"],
        "true"
    );
    assert_eq!(
        lxd.requests().iter().filter(|r| r.method == "PUT").count(),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_state_directory_stops_no_reconcile_and_statuses_are_written_once_it_frees() {
    use std::sync::atomic::Ordering;
    let lxd = MemLxd::new();
    lxd.add_instance("i0", &["default"]);
    lxd.add_instance("i1", &["default"]);
    let (p, status) = pipeline(&lxd, |_| {});
    p.load(resources(
        &(app("one", 3) + &machine("0", "i0", &["one"]) + &machine("1", "i1", &["one"])),
    ));
    p.relist().await.unwrap();
    status.full.store(true, Ordering::SeqCst);
    p.worker
        .process(&WorkKey::Resource(key("0")))
        .await
        .unwrap();
    // LXD was reconciled all the same; the status waits, decided but not stored.
    assert_eq!(
        lxd.instance_profiles("i0").unwrap(),
        ["default", "juju-m", "juju-m-one-3"]
    );
    assert!(!p.report.flush(Duration::from_secs(5)));
    assert_eq!(status.get(&key("0")), None);
    assert_eq!(p.report.unwritten(), 1);
    assert_eq!(p.report.last(&key("0")).unwrap().phase, Phase::Applied);
    // Once the disk frees, the writer stores it on its own, with no other write to wait
    // for.
    status.full.store(false, Ordering::SeqCst);
    assert!(p.report.flush(Duration::from_secs(5)));
    assert_eq!(p.report.unwritten(), 0);
    assert_eq!(status.get(&key("0")).unwrap().phase, Phase::Applied);
}

/// Juju's layout: one environ controller for the model's Machines and one container
/// controller per host, all on one LXD: each touches only its own, and the environ
/// controller never writes a Container's status.
#[tokio::test(start_paused = true)]
async fn the_environ_and_container_flavours_each_touch_only_their_own() {
    use super::Flavour;
    let lxd = MemLxd::new();
    for i in ["m0", "c0", "c1"] {
        lxd.add_instance(i, &["default"]);
    }
    let on_host = |name: &str, host: &str, instance: &str| {
        format!(
            "apiVersion: lxdmutater.dev/v1alpha1\nkind: Container\nmetadata: {{name: \"{name}\", namespace: m}}\nspec: {{machine: \"{host}\", instance: {instance}, applications: [one]}}\n---\n"
        )
    };
    let yaml = app("one", 3)
        + &machine("0", "m0", &["one"])
        + &on_host("0-lxd-0", "0", "c0")
        + &on_host("1-lxd-0", "1", "c1");
    let run = |flavour: Flavour, host: Option<&str>| {
        let (p, status) = pipeline(&lxd, |o| {
            o.flavour = flavour;
            o.machine = host.map(str::to_string);
        });
        (p, status)
    };
    let mut touched = Vec::new();
    for (flavour, host, instance) in [
        (Flavour::Environ, None, "m0"),
        (Flavour::Container, Some("0"), "c0"),
        (Flavour::Container, Some("1"), "c1"),
    ] {
        let (p, _) = run(flavour, host);
        p.load(resources(&yaml));
        p.relist().await.unwrap();
        lxd.clear_requests();
        p.enqueue_all();
        p.worker.clone().run(true).await;
        let patched: Vec<String> = writes(&lxd)
            .into_iter()
            .filter(|w| w.starts_with("PATCH"))
            .collect();
        assert_eq!(
            patched,
            [format!("PATCH /1.0/instances/{instance}")],
            "{flavour:?}"
        );
        let containers = |h: &str| {
            p.report
                .last(&ResourceKey::new(Kind::Container, "m", h))
                .is_some()
        };
        let machines = p.report.last(&key("0")).is_some();
        touched.push((machines, containers("0-lxd-0"), containers("1-lxd-0")));
    }
    assert_eq!(
        touched,
        [
            (true, false, false),
            (false, true, false),
            (false, false, true)
        ],
        "each status written by its own controller only"
    );
}

/// A subordinate's profile goes on every machine running one of its principals, right
/// after it; editing the relation away takes it off, and the machines are enqueued by
/// the Application's change alone.
#[tokio::test(start_paused = true)]
async fn a_subordinate_profile_follows_its_principal_and_leaves_with_the_relation() {
    let lxd = MemLxd::new();
    lxd.add_instance("i0", &["default"]);
    let (p, _) = pipeline(&lxd, |_| {});
    let sub = |to: &str| {
        format!(
            "apiVersion: lxdmutater.dev/v1alpha1\nkind: Application\nmetadata: {{name: tel, namespace: m}}\nspec: {{revision: 2, subordinateTo: [{to}], lxdProfile: {{config: {{security.privileged: \"true\"}}}}}}\n---\n"
        )
    };
    let base = app("one", 3) + &machine("0", "i0", &["one"]);
    p.load(resources(&(base.clone() + &sub("one"))));
    p.relist().await.unwrap();
    p.worker
        .process(&WorkKey::Resource(key("0")))
        .await
        .unwrap();
    assert_eq!(
        lxd.instance_profiles("i0").unwrap(),
        ["default", "juju-m", "juju-m-one-3", "juju-m-tel-2"]
    );
    // The relation goes: the Application's change alone names the machine.
    let changed = p.store.upsert(resources(&sub("other")).remove(0));
    assert_eq!(changed, [key("0")]);
    p.worker
        .process(&WorkKey::Resource(key("0")))
        .await
        .unwrap();
    assert_eq!(
        lxd.instance_profiles("i0").unwrap(),
        ["default", "juju-m", "juju-m-one-3"]
    );
}
