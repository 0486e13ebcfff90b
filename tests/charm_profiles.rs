//! The eighteen published charm `lxd-profile.yaml` files in tests/fixtures, pasted under
//! `spec.lxdProfile` as they are: every one parses, and Juju's rules flag exactly the
//! ones SOURCES.md says Juju flags.

use std::path::PathBuf;

use lxd_mutater::resource::{Resource, parse_str};

fn fixtures() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/charm-profiles");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

/// An Application whose lxdProfile is the charm's file, indented as a user would paste it.
fn application(profile: &str, force: bool) -> String {
    let mut doc = String::from(
        "apiVersion: lxdmutater.dev/v1alpha1\nkind: Application\nmetadata: {name: app}\nspec:\n  revision: 1\n",
    );
    if force {
        doc.push_str("  force: true\n");
    }
    doc.push_str("  lxdProfile:\n");
    for line in profile.lines() {
        doc.push_str("    ");
        doc.push_str(line);
        doc.push('\n');
    }
    doc
}

fn expected_violations(name: &str) -> Vec<&'static str> {
    const BOOT: &str = "invalid lxd-profile: contains config value \"boot.autostart\"";
    const DISK: &str = "invalid lxd-profile: contains device type \"disk\"";
    match name {
        "charmed-kubernetes_charm-kubernetes-worker.2019-0dcea4f" => vec![BOOT, DISK, DISK],
        "canonical_k8s-operator.pre-reduction-31193d6" => vec![BOOT, DISK, DISK, DISK],
        "canonical_charm-ovn-chassis.unmerged-gerrit-8d931db" => {
            vec!["invalid lxd-profile: contains config value \"limits.kernel.memlock\""]
        }
        "juju_juju.testcharm-lxd-profile" => {
            vec!["invalid lxd-profile: contains device type \"unix-disk\""]
        }
        _ => vec![],
    }
}

#[test]
fn there_are_eighteen_charm_profiles() {
    assert_eq!(fixtures().len(), 18);
}

#[test]
fn every_published_charm_profile_parses_and_juju_rules_flag_the_right_ones() {
    for (name, text) in fixtures() {
        let parsed = parse_str(&name, &application(&text, false));
        assert!(parsed.errors.is_empty(), "{name}: {:?}", parsed.errors);
        assert_eq!(parsed.resources.len(), 1, "{name}");
        let mut got: Vec<String> = parsed
            .rule_violations
            .iter()
            .map(|p| {
                p.message
                    .rsplit(": invalid")
                    .next()
                    .map(|m| format!("invalid{m}"))
                    .unwrap()
            })
            .collect();
        got.sort();
        assert_eq!(got, expected_violations(&name), "{name}");
        // Every violation points into the profile, not at the document.
        for v in &parsed.rule_violations {
            assert!(v.line > 6, "{name}: {v}");
        }
        let forced = parse_str(&name, &application(&text, true));
        assert!(
            forced.errors.is_empty() && forced.rule_violations.is_empty(),
            "{name}"
        );
    }
}

#[test]
fn booleans_become_strings_and_pasted_names_are_dropped_with_a_warning() {
    let text = fixtures()
        .into_iter()
        .find(|(n, _)| n == "charmed-kubernetes_charm-kubernetes-control-plane")
        .unwrap()
        .1;
    let parsed = parse_str("cp.yaml", &application(&text, false));
    let Resource::Application(app) = &parsed.resources[0].resource else {
        panic!("not an application");
    };
    let p = app.spec.lxd_profile.as_ref().unwrap();
    assert_eq!(p.config["security.nesting"], "true");
    assert_eq!(p.config["security.privileged"], "true");
    assert_eq!(p.devices["aadisable"]["type"], "unix-char");
    assert_eq!(parsed.warnings.len(), 1);
    assert_eq!(
        parsed.warnings[0].to_string(),
        "cp.yaml:7:5: spec.lxdProfile.name: ignored (LXD takes the profile's name from the application)"
    );
}

#[test]
fn raw_lxc_blocks_keep_their_text() {
    let text = fixtures()
        .into_iter()
        .find(|(n, _)| n == "seffyroff_layer-maas")
        .unwrap()
        .1;
    let parsed = parse_str("maas.yaml", &application(&text, false));
    let Resource::Application(app) = &parsed.resources[0].resource else {
        panic!("not an application");
    };
    let p = app.spec.lxd_profile.as_ref().unwrap();
    assert_eq!(
        p.config["raw.lxc"],
        "lxc.cgroup.devices.allow = c 10:237 rwm\nlxc.apparmor.profile = unconfined\nlxc.cgroup.devices.allow = b 7:* rwm"
    );
    assert_eq!(p.description, "MAAS LXD profile");
    assert_eq!(parsed.warnings.len(), 2, "name and used_by");
}
