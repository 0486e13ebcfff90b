//! `juju status --format=yaml` (Juju 3.x) to resources: one namespace, the model; an
//! Application per application, its profile content taken from the machines'
//! `lxd-profiles`; a Machine per top-level machine, a Container per LXD container.
//!
//! The facts this follows (keys, nesting, how containers, subordinates, manual machines,
//! life and pending instances appear) are in shared/research/juju-status.md. In short:
//! - an application's profile content appears only under the `lxd-profiles` of the
//!   machines Juju applied it to, keyed by its `charm-profile`; when no machine has it
//!   (a refresh not applied yet) the Application is left out with an error, since an
//!   Application without a profile would make the controller take the profile off;
//! - a subordinate's units sit under its principal's units, with no `machine`; the
//!   subordinate gets `subordinateTo` (its principals), which puts its profile after
//!   theirs on every machine that runs one, as Juju's worker does;
//! - `instance-id: pending` is a machine not provisioned (no `spec.instance`);
//!   `manual:<host>` a manual machine (`manual: true`, which the controller skips);
//! - machine and unit life is `juju-status.life` (absent when alive); dead units do not
//!   count, dying ones do; application life is the application's own `life`.
//!
//! Two rooms: `read` turns the text into the status as Juju printed it (errors name the
//! line and the field), `converter` turns that status into resources and notes.

mod converter;
mod read;

use super::{Import, ImportError};

/// Turns the text of `juju status --format=yaml` (read from `file`) into resources.
pub fn convert(file: &str, text: &str) -> Result<Import, ImportError> {
    read::refuse_colour(file, text)?;
    let status = read::parse(file, text)?;
    let ns = read::model_name(file, &status)?;
    converter::Converter::new(file, ns).run(&status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::Level;
    use std::collections::HashMap;

    use crate::import::expected_list;
    use crate::resource::{Application, Kind, Life, ProfileNames, Resource, Workload, parse_str};
    use crate::store::PreparedApp;

    /// The composed example of shared/research/juju-status.md (section 6), as it is.
    const DEMO: &str = include_str!("../../../tests/fixtures/import/juju-status-demo.yaml");

    fn import(text: &str) -> Import {
        convert("status.yaml", text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn notes(i: &Import, level: Level) -> Vec<String> {
        i.notes
            .iter()
            .filter(|n| n.level == level)
            .map(|n| n.to_string())
            .collect()
    }

    fn app<'a>(i: &'a Import, name: &str) -> Option<&'a Application> {
        i.resources().find_map(|r| match r {
            Resource::Application(a) if a.metadata.name == name => Some(a),
            _ => None,
        })
    }

    fn workload<'a>(i: &'a Import, kind: Kind, name: &str) -> Option<&'a Workload> {
        i.resources().find_map(|r| match r {
            Resource::Machine(w) if kind == Kind::Machine && w.metadata.name == name => Some(w),
            Resource::Container(w) if kind == Kind::Container && w.metadata.name == name => Some(w),
            _ => None,
        })
    }

    /// A status with model `m`: `machines` and `applications` are the indented entries.
    fn status(machines: &str, applications: &str) -> String {
        format!(
            "model:\n  name: m\n  type: iaas\nmachines:\n{machines}applications:\n{applications}storage: {{}}\n"
        )
    }

    const ONE_PROFILE: &str = "    lxd-profiles:\n      juju-m-a-1:\n        config:\n          security.nesting: \"true\"\n        description: \"\"\n        devices: {}\n";
    const APP_A: &str = "  a:\n    charm-name: a\n    charm-rev: 1\n    charm-profile: juju-m-a-1\n    units:\n      a/0:\n        machine: \"0\"\n";

    #[test]
    fn the_composed_example_becomes_applications_machines_and_a_container() {
        let i = import(DEMO);
        assert_eq!(
            i.keys(),
            [
                "Application demo/containerd",
                "Application demo/kubernetes-worker",
                "Application demo/ubuntu",
                "Machine demo/0",
                "Machine demo/1",
                "Container demo/1-lxd-0",
            ]
        );
        let kw = app(&i, "kubernetes-worker").unwrap();
        assert_eq!(kw.spec.revision, 198);
        assert_eq!(kw.spec.charm.as_deref(), Some("kubernetes-worker"));
        let p = kw.spec.lxd_profile.as_ref().unwrap();
        assert_eq!(p.description, "kubernetes-worker on LXD");
        assert_eq!(p.config["security.privileged"], "true");
        assert_eq!(p.devices["kmsg"]["type"], "unix-char");
        assert!(!kw.spec.force);
        let cd = app(&i, "containerd").unwrap();
        assert_eq!(cd.spec.revision, 73);
        assert!(cd.spec.subordinate);
        assert_eq!(cd.spec.subordinate_to, ["kubernetes-worker"]);
        assert_eq!(
            cd.spec.lxd_profile.as_ref().unwrap().config["linux.kernel_modules"],
            "overlay,br_netfilter"
        );
        let ubuntu = app(&i, "ubuntu").unwrap();
        assert_eq!(ubuntu.spec.revision, 24);
        assert_eq!(
            ubuntu.spec.lxd_profile, None,
            "no charm-profile, no profile"
        );

        let m0 = workload(&i, Kind::Machine, "0").unwrap();
        assert_eq!(m0.spec.instance.as_deref(), Some("juju-4d5e6f-0"));
        // containerd is placed by its subordinateTo, right after kubernetes-worker.
        assert_eq!(m0.spec.applications, ["kubernetes-worker"]);
        assert_eq!((m0.spec.life, m0.spec.manual), (Life::Alive, false));
        let m1 = workload(&i, Kind::Machine, "1").unwrap();
        assert!(m1.spec.manual);
        assert_eq!(m1.spec.instance, None, "manual:10.20.0.15 is no LXD name");
        assert_eq!(m1.spec.applications, ["ubuntu"]);
        let c = workload(&i, Kind::Container, "1-lxd-0").unwrap();
        assert_eq!(c.spec.machine.as_deref(), Some("1"));
        assert_eq!(c.spec.instance.as_deref(), Some("juju-4d5e6f-1-lxd-0"));
        assert_eq!(c.spec.applications, ["kubernetes-worker"]);

        // The manual machine is said, nothing else is worth a word.
        assert_eq!(
            notes(&i, Level::Note),
            [
                "status.yaml:60: note: machine \"1\" is a manual machine (manual:10.20.0.15): \
              imported with manual: true, which the controller skips, as Juju does"
            ]
        );
        assert!(notes(&i, Level::Warning).is_empty(), "{:?}", i.notes);
        assert!(!i.has_errors());
    }

    #[test]
    fn the_controller_expects_exactly_the_lists_juju_left_for_the_example() {
        let i = import(DEMO);
        let apps: HashMap<(String, String), PreparedApp> = i
            .resources()
            .filter_map(|r| match r {
                Resource::Application(a) => Some((
                    (a.metadata.namespace.clone(), a.metadata.name.clone()),
                    PreparedApp::from(a.clone()),
                )),
                _ => None,
            })
            .collect();
        let names = ProfileNames::default();
        let m0 = workload(&i, Kind::Machine, "0").unwrap();
        assert_eq!(
            expected_list(Kind::Machine, m0, &apps, &names).unwrap(),
            [
                "default",
                "juju-demo",
                "juju-demo-kubernetes-worker-198",
                "juju-demo-containerd-73"
            ]
        );
        let c = workload(&i, Kind::Container, "1-lxd-0").unwrap();
        assert_eq!(
            expected_list(Kind::Container, c, &apps, &names).unwrap(),
            [
                "default",
                "juju-demo-kubernetes-worker-198",
                "juju-demo-containerd-73"
            ]
        );
    }

    #[test]
    fn the_output_loads_through_the_products_own_parser_unchanged() {
        let i = import(DEMO);
        let yaml = i.to_yaml().unwrap();
        let parsed = parse_str("out.yaml", &yaml);
        assert!(parsed.errors.is_empty(), "{:?}\n{yaml}", parsed.errors);
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
        assert!(
            parsed.rule_violations.is_empty(),
            "{:?}",
            parsed.rule_violations
        );
        let back: Vec<Resource> = parsed.resources.into_iter().map(|l| l.resource).collect();
        let ours: Vec<Resource> = i.resources().cloned().collect();
        assert_eq!(back, ours);
        assert!(yaml.starts_with("# Juju model \"demo\""), "{yaml}");
        assert!(
            yaml.contains("---\n# manual machine (manual:10.20.0.15): the controller skips it\n"),
            "{yaml}"
        );
    }

    #[test]
    fn output_order_is_by_kind_then_name_as_juju_sorts_whatever_the_input_order() {
        let text = status(
            "  \"10\":\n    instance-id: juju-aaaaaa-10\n  \"2\":\n    instance-id: juju-aaaaaa-2\n",
            "  z:\n    charm-rev: 1\n    units:\n      z/10:\n        machine: \"10\"\n      z/2:\n        machine: \"2\"\n  b:\n    charm-rev: 3\n    units:\n      b/0:\n        machine: \"10\"\n",
        );
        let i = import(&text);
        assert_eq!(
            i.keys(),
            [
                "Application m/b",
                "Application m/z",
                "Machine m/2",
                "Machine m/10"
            ]
        );
        assert_eq!(
            workload(&i, Kind::Machine, "10").unwrap().spec.applications,
            ["b", "z"]
        );
        assert_eq!(import(&text).to_yaml().unwrap(), i.to_yaml().unwrap());
    }

    #[test]
    fn pending_dying_dead_and_unreadable_entities_are_said_never_skipped_silently() {
        let machines = "  \"0\":\n    juju-status: {current: started, life: dying}\n    instance-id: juju-aaaaaa-0\n    containers:\n      0/kvm/0:\n        instance-id: juju-aaaaaa-0-kvm-0\n      0/lxd/1:\n        instance-id: pending\n        containers:\n          0/lxd/1/lxd/0:\n            instance-id: juju-aaaaaa-0-lxd-1-lxd-0\n  \"1\":\n    juju-status: {current: stopped, life: dead}\n    instance-id: juju-aaaaaa-1\n  \"2\":\n    instance-id: pending\n  \"3\":\n    status-error: 'cannot get machine 3: boom'\n";
        let apps = "  a:\n    charm-rev: 1\n    units:\n      a/0:\n        juju-status: {current: executing, life: dying}\n        machine: \"0\"\n      a/1:\n        juju-status: {current: lost, life: dead}\n        machine: \"2\"\n      a/2:\n        machine: 0/kvm/0\n      a/3:\n        juju-status: {current: allocating}\n  gone:\n    charm-rev: 2\n    life: dead\n  broken:\n    status-error: 'cannot get application: boom'\n";
        let i = import(&status(machines, apps));
        assert_eq!(
            i.keys(),
            [
                "Application m/a",
                "Machine m/0",
                "Machine m/1",
                "Machine m/2",
                "Container m/0-lxd-1"
            ]
        );
        let m0 = workload(&i, Kind::Machine, "0").unwrap();
        assert_eq!(
            (m0.spec.life, m0.spec.applications.clone()),
            (Life::Dying, vec!["a".into()])
        );
        let m1 = workload(&i, Kind::Machine, "1").unwrap();
        assert_eq!(m1.spec.life, Life::Dead);
        let m2 = workload(&i, Kind::Machine, "2").unwrap();
        assert_eq!(m2.spec.instance, None);
        assert!(
            m2.spec.applications.is_empty(),
            "a dead unit does not count"
        );
        let c = workload(&i, Kind::Container, "0-lxd-1").unwrap();
        assert_eq!(c.spec.instance, None);
        let all: Vec<String> = i.notes.iter().map(|n| n.to_string()).collect();
        let said = |what: &str| {
            assert!(all.iter().any(|n| n.contains(what)), "{what:?} in {all:#?}");
        };
        said("note: machine \"0\" is dying: imported with life: dying");
        said("note: machine \"1\" is dead: imported with life: dead");
        said("note: machine \"2\" is not provisioned yet (instance-id pending)");
        said("note: container \"0/lxd/1\" is not provisioned yet");
        said(
            "warning: machine \"3\": Juju could not read it (cannot get machine 3: boom): skipped",
        );
        said(
            "note: container \"0/kvm/0\" is not an LXD container (a kvm one): skipped (with units of a)",
        );
        said("warning: container \"0/lxd/1/lxd/0\" is nested in container \"0/lxd/1\": skipped");
        said("note: unit \"a/0\" is dying: still counted");
        said("note: unit \"a/1\" is dead: not counted");
        said("note: unit \"a/3\" has no machine yet");
        said("note: application \"gone\" is dead: skipped");
        said(
            "warning: application \"broken\": Juju could not read it (cannot get application: boom): skipped",
        );
        // Each note carries the line of what it is about.
        assert!(
            all.iter()
                .any(|n| n.starts_with("status.yaml:19: note: machine \"2\"")),
            "{all:#?}"
        );
        assert!(!i.has_errors());
        let parsed = parse_str("out.yaml", &i.to_yaml().unwrap());
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    }

    #[test]
    fn a_profile_no_machine_shows_leaves_the_application_out_and_the_machine_naming_it() {
        // After `juju refresh`, before the worker applied the new revision: Juju names the
        // profile, no machine shows its content. Writing the Application without a
        // profile would take the old one off every instance.
        let text = status(
            "  \"0\":\n    instance-id: juju-aaaaaa-0\n",
            &APP_A
                .replace("charm-rev: 1", "charm-rev: 2")
                .replace("a-1", "a-2"),
        );
        let i = import(&text);
        assert!(i.has_errors());
        assert!(app(&i, "a").is_none());
        assert_eq!(
            workload(&i, Kind::Machine, "0").unwrap().spec.applications,
            ["a"],
            "the machine still names it: the controller reports it and writes nothing"
        );
        let errors = notes(&i, Level::Error);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("status.yaml:8: error: application \"a\": no machine shows the content of its profile \"juju-m-a-2\""),
            "{errors:?}"
        );
        assert!(notes(&i, Level::Warning).iter().any(|w| {
            w.contains("the controller will report an error: application \"a\" not found")
        }));
    }

    #[test]
    fn copies_of_a_profile_that_differ_are_an_error() {
        let text = status(
            &format!(
                "  \"0\":\n    instance-id: juju-aaaaaa-0\n{ONE_PROFILE}  \"1\":\n    instance-id: juju-aaaaaa-1\n{}",
                ONE_PROFILE.replace("\"true\"", "\"false\"")
            ),
            APP_A,
        );
        let i = import(&text);
        assert!(app(&i, "a").is_none());
        assert!(
            notes(&i, Level::Error)[0].contains("machines \"0\" and \"1\" show different content"),
            "{:?}",
            i.notes
        );
    }

    #[test]
    fn coloured_input_is_refused_with_the_no_color_hint() {
        let text = "model:\n  name: \u{1b}[1;34mdemo\u{1b}[0m\n";
        let e = convert("status.yaml", text).unwrap_err();
        assert!(
            matches!(
                e,
                ImportError::Coloured {
                    line: 2,
                    column: 9,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("`juju status --format=yaml --no-color`"),
            "{e}"
        );
    }

    #[test]
    fn malformed_input_names_the_file_line_and_field() {
        let e = convert(
            "status.yaml",
            &status("", "  a:\n    charm-rev: 1\n    units: [a/0]\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("status.yaml:8:12: applications.a.units: expected mapping"),
            "{e}"
        );
        let i = import(&status("", "  a:\n    charm-rev: seven\n"));
        assert_eq!(
            notes(&i, Level::Error),
            [
                "status.yaml:6: error: application \"a\": charm-rev \"seven\" is not an integer >= 0: not imported"
            ]
        );
        let e = convert("status.yaml", "model:\n  name: demo\nmachines: [\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("status.yaml:"), "{e}");
        assert!(!e.starts_with("status.yaml:0:"), "a position: {e}");
        let e = convert("status.yaml", &status("  \"0\": {}\n  \"0\": {}\n", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("the key \"0\" appears twice"), "{e}");
        let e = convert("status.yaml", "just text\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("status.yaml:1:1: "), "{e}");
    }

    #[test]
    fn other_outputs_and_kubernetes_models_are_refused_with_the_reason() {
        let e = convert("s.yaml", "model: demo\nmachines: {}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`juju show-machine`"), "{e}");
        let e = convert("s.yaml", "model: {name: k, type: caas}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("caas"), "{e}");
        let e = convert(
            "s.yaml",
            "apiVersion: lxdmutater.dev/v1alpha1\nkind: Machine\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("resource file"), "{e}");
        let e = convert("s.yaml", "machines: {}\n").unwrap_err().to_string();
        assert_eq!(
            e,
            "s.yaml: no model.name: not the output of `juju status --format=yaml`"
        );
    }

    #[test]
    fn a_profile_breaking_jujus_rules_was_forced_and_is_imported_with_force() {
        let text = status(
            &format!(
                "  \"0\":\n    instance-id: juju-aaaaaa-0\n{}",
                ONE_PROFILE.replace("security.nesting", "boot.autostart")
            ),
            APP_A,
        );
        let i = import(&text);
        let a = app(&i, "a").unwrap();
        assert!(a.spec.force);
        assert!(notes(&i, Level::Warning)[0].contains("contains config value \"boot.autostart\""));
        let parsed = parse_str("out.yaml", &i.to_yaml().unwrap());
        assert!(parsed.rule_violations.is_empty() && parsed.errors.is_empty());
    }

    #[test]
    fn juju_3_6_names_with_the_models_short_id_are_told_with_the_templates_to_run_with() {
        let text = status(
            &format!(
                "  \"0\":\n    instance-id: juju-aaaaaa-0\n{}",
                ONE_PROFILE.replace("juju-m-a-1", "juju-m-7b0768-a-1")
            ),
            &APP_A.replace("juju-m-a-1", "juju-m-7b0768-a-1"),
        );
        let i = import(&text);
        assert!(app(&i, "a").unwrap().spec.lxd_profile.is_some());
        let w = notes(&i, Level::Warning);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("--charm-profile-template 'juju-{model}-7b0768-{app}-{rev}' --model-profile-template 'juju-{model}-7b0768'"),
            "{w:?}"
        );
    }

    #[test]
    fn a_subordinate_counted_where_no_principal_of_it_is_listed_is_listed_itself() {
        // A filtered status: the principal `p` of `s` on machine 0 is not among s's
        // subordinate-to. s's profile must stay: s is listed on the machine.
        let apps = "  p:\n    charm-rev: 1\n    units:\n      p/0:\n        machine: \"0\"\n        subordinates:\n          s/0: {}\n  s:\n    charm-rev: 4\n    subordinate-to: [q]\n";
        let i = import(&status("  \"0\":\n    instance-id: juju-aaaaaa-0\n", apps));
        assert_eq!(
            workload(&i, Kind::Machine, "0").unwrap().spec.applications,
            ["p", "s"]
        );
        let apps = apps.replace("[q]", "[p]");
        let i = import(&status("  \"0\":\n    instance-id: juju-aaaaaa-0\n", &apps));
        assert_eq!(
            workload(&i, Kind::Machine, "0").unwrap().spec.applications,
            ["p"]
        );
    }

    #[test]
    fn a_machine_whose_recorded_profiles_differ_from_the_expected_ones_is_warned_about() {
        // Juju recorded nothing on machine 0 (the profile shows on machine 1 only): the
        // first run adds it there.
        let text = status(
            &format!(
                "  \"0\":\n    instance-id: juju-aaaaaa-0\n  \"1\":\n    instance-id: juju-aaaaaa-1\n{ONE_PROFILE}"
            ),
            &format!("{APP_A}      a/1:\n        machine: \"1\"\n"),
        );
        let i = import(&text);
        let w = notes(&i, Level::Warning);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("machine \"0\": Juju recorded the charm profiles [], the imported resources expect [juju-m-a-1]"),
            "{w:?}"
        );
    }

    #[test]
    fn unquoted_ids_and_json_input_are_read() {
        let text = "model: {name: m}\nmachines:\n  0: {instance-id: juju-aaaaaa-0}\napplications:\n  a: {charm-rev: 1, units: {a/0: {machine: 0}}}\n";
        let i = import(text);
        assert_eq!(
            workload(&i, Kind::Machine, "0").unwrap().spec.applications,
            ["a"]
        );
        let json = r#"{"model":{"name":"m","type":"iaas"},"machines":{"0":{"instance-id":"juju-aaaaaa-0"}},"applications":{"a":{"charm-rev":1,"units":{"a/0":{"machine":"0"}}}},"storage":{}}"#;
        assert_eq!(import(json).to_yaml().unwrap(), i.to_yaml().unwrap());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
            let _ = convert("s.yaml", &text);
        }

        #[test]
        fn status_like_text_never_panics(text in "(model:\\n  name: m\\n|machines:\\n|  \"0\":\\n|    instance-id: (juju-a-0|pending|manual:x)\\n|applications:\\n|  a:\\n|    charm-rev: 1\\n|    units:\\n|      a/0:\\n|        machine: \"0\"\\n|    containers:\\n|      0/lxd/0: \\{\\}\\n|[a-z:\\- \\n]){0,40}") {
            let _ = convert("s.yaml", &text);
        }
    }
}
