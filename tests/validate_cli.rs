//! `lxd-mutater validate` and `lxd-mutater crds`, through the built binary.

use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lxd-mutater"))
}

fn validate(dir: &Path) -> (i32, String) {
    let out = bin().arg("validate").arg(dir).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

const BAD_APP: &str = "apiVersion: lxdmutater.dev/v1alpha1
kind: Application
metadata: {name: worker}
spec:
  revision: 7
  lxdProfile:
    name: juju-default-k8s-worker-deployment-0
    config:
      boot.autostart: true
      security.nesting: true
    devices:
      hashsize: {type: disk, path: /sys/module/nf_conntrack/parameters/hashsize, source: /dev/null}
";

#[test]
fn profile_rule_violations_are_printed_in_jujus_words_and_exit_1_unless_forced() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("app.yaml"), BAD_APP).unwrap();
    let (code, out) = validate(d.path());
    assert_eq!(code, 1, "{out}");
    let file = d.path().join("app.yaml").display().to_string();
    let lines: Vec<&str> = out.lines().filter(|l| !l.contains("warning:")).collect();
    assert_eq!(
        lines,
        vec![
            format!(
                "{file}:9:7: spec.lxdProfile.config.boot.autostart: invalid lxd-profile: contains config value \"boot.autostart\""
            ),
            format!(
                "{file}:12:18: spec.lxdProfile.devices.hashsize.type: invalid lxd-profile: contains device type \"disk\""
            ),
        ]
    );
    std::fs::write(
        d.path().join("app.yaml"),
        BAD_APP.replace("  revision: 7\n", "  revision: 7\n  force: true\n"),
    )
    .unwrap();
    let (code, out) = validate(d.path());
    assert_eq!(code, 0, "{out}");
}

#[test]
fn the_examples_are_valid() {
    let (code, out) = validate(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn bad_files_give_one_line_each_and_exit_1() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("syntax.yaml"), "apiVersion: [\n").unwrap();
    std::fs::write(
        d.path().join("dup1.yaml"),
        "apiVersion: lxdmutater.dev/v1alpha1\nkind: Machine\nmetadata: {name: '0'}\nspec: {}\n",
    )
    .unwrap();
    std::fs::write(
        d.path().join("dup2.yml"),
        "apiVersion: lxdmutater.dev/v1alpha1\nkind: Machine\nmetadata: {name: '0'}\nspec: {}\n",
    )
    .unwrap();
    std::fs::write(d.path().join(".hidden.yaml"), "not: [valid").unwrap();
    std::fs::write(d.path().join("big.yaml"), "#".repeat(11 * 1024 * 1024)).unwrap();
    let (code, out) = validate(d.path());
    assert_eq!(code, 1);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].contains("big.yaml: file is larger than"), "{out}");
    assert!(
        lines[1].contains(
            "dup2.yml:1:1: Machine \"0\" in namespace \"default\" is defined twice: here and at "
        ),
        "{out}"
    );
    assert!(lines[1].contains("dup1.yaml:1"), "{out}");
    assert!(lines[2].contains("syntax.yaml:1:"), "{out}");
}

#[test]
fn a_missing_path_is_a_problem() {
    let (code, out) = validate(Path::new("/nonexistent/resources"));
    assert_eq!(code, 1);
    assert!(out.contains("/nonexistent/resources: no such file or directory"));
}

#[test]
fn crds_output_equals_the_checked_in_file() {
    let out = bin().arg("crds").output().unwrap();
    assert!(out.status.success());
    let have =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/crds.yaml"))
            .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), have);
}

/// The completion scripts parse in their shells (bash always; zsh and fish where
/// installed: `make test` installs them).
#[test]
fn completions_parse_in_bash_zsh_and_fish() {
    for (shell, check) in [
        ("bash", vec!["-n"]),
        ("zsh", vec!["-n"]),
        ("fish", vec!["--no-execute"]),
    ] {
        let out = bin().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let script = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(script.path(), &out.stdout).unwrap();
        let Ok(parsed) = Command::new(shell).args(&check).arg(script.path()).output() else {
            assert_ne!(shell, "bash", "bash must be there");
            eprintln!("{shell} is not installed: its script is not parsed");
            continue;
        };
        assert!(
            parsed.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&parsed.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("lxd-mutater"),
            "{shell}"
        );
    }
}

#[test]
fn a_container_controller_needs_its_host_machine() {
    let out = bin()
        .args([
            "run",
            "--flavour",
            "container",
            "--resources",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--flavour container needs --machine NAME"),
        "{err}"
    );
}
