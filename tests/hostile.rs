//! Hostile input, through the three ways it reaches the controller: `lxd-mutater
//! validate`, the file source of `lxd-mutater run`, and the Kubernetes source.
//!
//! The corpus is `tests/fixtures/hostile/` (small text files, one hostile input each, a
//! comment on top saying what it is) plus what `corpus()` makes at test time in a temp
//! dir: the 10 MB, 8 GB sparse, just-too-big, 20k-deep, amplifying, non-UTF-8 and NUL
//! inputs, which are not committed. `CORPUS` says, for every input, where `validate`
//! points, a few words of what it says, and what `run` does with the file.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fake_apiserver::FakeApiServer;
use serde_json::{Value, json};
use support::{Daemon, TestProject, metric_value, wait_until};

/// What `run` does with a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    /// It does not load: counted in the source gauge, logged with its position.
    Refused,
    /// It loads: its charm profile breaks Juju's rules (SPEC §4), which a Machine running
    /// the application reports; `validate` refuses it.
    BreaksRules,
    /// It loads, but it defines a resource another file already defines: ignored.
    Duplicate,
}

struct Case {
    file: &'static str,
    /// `line:column` of the problem, or `None` for a whole-file problem (`file: message`).
    at: Option<&'static str>,
    /// A few words of the message.
    says: &'static str,
    run: Run,
}

const fn case(file: &'static str, at: &'static str, says: &'static str) -> Case {
    Case {
        file,
        at: Some(at),
        says,
        run: Run::Refused,
    }
}

const fn whole(file: &'static str, says: &'static str) -> Case {
    Case {
        file,
        at: None,
        says,
        run: Run::Refused,
    }
}

const fn rule(file: &'static str, at: &'static str, says: &'static str) -> Case {
    Case {
        file,
        at: Some(at),
        says,
        run: Run::BreaksRules,
    }
}

const TOO_LARGE: &str = "file is larger than 1048576 bytes: not parsed";
const NOT_A_RESOURCE: &str =
    "expected a resource (a mapping with apiVersion, kind, metadata, spec)";
const REVISION: &str = "spec.revision: revision must be an integer >= 0, not";
const INSTANCE_CHARS: &str = "can only contain letters, digits and hyphens";
const RESERVED: &str = "is reserved: lxd-mutater records ownership under \"user.lxd-mutater.\"";

/// Every hostile input, committed or generated.
const CORPUS: &[Case] = &[
    // YAML that does not parse.
    case(
        "syntax-unclosed-flow.yaml",
        "5:5",
        "while parsing a flow mapping, did not find expected ',' or '}'",
    ),
    case(
        "syntax-bad-indent.yaml",
        "6:13",
        "mapping values are not allowed in this context",
    ),
    case("syntax-tab-indent.yaml", "6:2", "tabs disallowed"),
    case("syntax-unterminated-quote.yaml", "4:18", "unclosed quote"),
    case(
        "syntax-duplicate-key.yaml",
        "7:3",
        "the key \"instance\" appears twice in this mapping",
    ),
    case(
        "syntax-undefined-alias.yaml",
        "6:13",
        "alias references unknown anchor",
    ),
    case(
        "long-implicit-key.yaml",
        "8:500012",
        "mapping values are not allowed",
    ),
    // Documents of the wrong shape.
    case("doc-is-a-list.yaml", "2:1", NOT_A_RESOURCE),
    case("doc-is-a-scalar.yaml", "2:1", NOT_A_RESOURCE),
    case("doc-is-a-number.yaml", "2:1", NOT_A_RESOURCE),
    // apiVersion and kind.
    case(
        "api-version-wrong.yaml",
        "2:1",
        "apiVersion: \"lxdmutater.dev/v1\" is not served here (expected lxdmutater.dev/v1alpha1)",
    ),
    case(
        "api-version-foreign.yaml",
        "2:1",
        "apiVersion: \"v1\" is not served here",
    ),
    case(
        "api-version-missing.yaml",
        "2:1",
        "apiVersion: missing (expected lxdmutater.dev/v1alpha1)",
    ),
    case(
        "kind-wrong.yaml",
        "3:1",
        "kind: unknown kind \"machine\" (expected one of Application, Machine, Container)",
    ),
    case("kind-missing.yaml", "2:1", "kind: missing"),
    // Required fields.
    case("missing-metadata.yaml", "4:1", "missing field `metadata`"),
    case(
        "missing-name.yaml",
        "4:12",
        "metadata: missing field `name`",
    ),
    case("missing-spec.yaml", "4:1", "missing field `spec`"),
    case(
        "missing-revision.yaml",
        "6:3",
        "spec: missing field `revision`",
    ),
    case(
        "container-without-machine.yaml",
        "5:1",
        "spec.machine: a Container needs spec.machine",
    ),
    // Unknown fields.
    case(
        "unknown-top-level-field.yaml",
        "7:1",
        "specs: unknown field `specs`",
    ),
    case(
        "unknown-metadata-field.yaml",
        "4:42",
        "metadata.namespce: unknown field `namespce`",
    ),
    case(
        "unknown-spec-field.yaml",
        "7:3",
        "spec.applicatons: unknown field `applicatons`",
    ),
    case(
        "unknown-lxdprofile-field.yaml",
        "8:5",
        "spec.lxdProfile: unknown field `conifg`",
    ),
    // Wrong types.
    case("type-revision-string.yaml", "6:13", "not \"seven\""),
    case(
        "type-revision-list.yaml",
        "6:3",
        "spec.revision: invalid type: sequence",
    ),
    case("type-revision-float.yaml", "6:13", "not 1.5"),
    case(
        "type-applications-string.yaml",
        "7:17",
        "spec.applications: expected sequence",
    ),
    case(
        "type-instance-list.yaml",
        "6:13",
        "spec.instance: expected string scalar",
    ),
    case(
        "type-manual-string.yaml",
        "7:11",
        "spec.manual: invalid boolean",
    ),
    case(
        "type-life-unknown.yaml",
        "7:9",
        "spec.life: unknown variant `undead`",
    ),
    case(
        "type-config-value-map.yaml",
        "9:25",
        "spec.lxdProfile.config.security.nesting: expected string scalar",
    ),
    case(
        "type-devices-scalar.yaml",
        "9:13",
        "spec.lxdProfile.devices.kmsg: expected mapping",
    ),
    case("type-spec-scalar.yaml", "5:7", "spec: expected mapping"),
    case(
        "type-labels-nested.yaml",
        "7:18",
        "metadata.labels.team: expected string scalar",
    ),
    // Revisions.
    case("revision-negative.yaml", "6:13", REVISION),
    case(
        "revision-huge.yaml",
        "6:13",
        "revision is too large: at most",
    ),
    case("revision-empty.yaml", "6:11", "not empty"),
    // Names that would walk out of a path, smuggle a query, or not fit.
    case(
        "name-slash.yaml",
        "4:12",
        "metadata.name: name \"a/b\" must not contain '/'",
    ),
    case(
        "name-dotdot.yaml",
        "4:12",
        "metadata.name: name \"..\" is not allowed",
    ),
    case(
        "namespace-traversal.yaml",
        "4:39",
        "metadata.namespace: namespace \"../../etc\" must not contain '/'",
    ),
    case(
        "name-300-bytes.yaml",
        "4:12",
        "metadata.name: name is 300 bytes long, more than 255",
    ),
    case(
        "name-empty.yaml",
        "4:12",
        "metadata.name: name must not be empty",
    ),
    case(
        "name-control-char.yaml",
        "4:12",
        "must not contain control characters",
    ),
    case(
        "name-nul-escape.yaml",
        "4:12",
        "must not contain control characters",
    ),
    case("instance-traversal.yaml", "6:3", INSTANCE_CHARS),
    case("instance-percent-2f.yaml", "6:3", INSTANCE_CHARS),
    case("instance-query.yaml", "6:3", INSTANCE_CHARS),
    case(
        "instance-300-bytes.yaml",
        "6:3",
        "must be 1-63 characters long",
    ),
    case(
        "extra-profile-slash.yaml",
        "7:23",
        "spec.extraProfiles[1]: profile name \"a/b\" must not contain '/'",
    ),
    case(
        "extra-profile-dotdot.yaml",
        "7:19",
        "spec.extraProfiles[0]: profile name \"..\" is not allowed",
    ),
    case(
        "extra-profile-300-bytes.yaml",
        "7:19",
        "spec.extraProfiles[0]: profile name is 300 bytes long, more than 255",
    ),
    case(
        "application-ref-slash.yaml",
        "7:23",
        "spec.applications[1]: application name \"x/y\" must not contain '/'",
    ),
    // Juju's profile rules: the resource loads, validate refuses it.
    rule(
        "rule-device-disk.yaml",
        "9:14",
        "spec.lxdProfile.devices.root.type: invalid lxd-profile: contains device type \"disk\"",
    ),
    rule(
        "rule-device-nic.yaml",
        "10:9",
        "invalid lxd-profile: contains device type \"nic\"",
    ),
    rule(
        "rule-config-boot.yaml",
        "9:7",
        "spec.lxdProfile.config.boot.autostart: invalid lxd-profile: contains config value \"boot.autostart\"",
    ),
    rule(
        "rule-config-limits.yaml",
        "10:7",
        "invalid lxd-profile: contains config value \"limits.cpu\"",
    ),
    rule(
        "rule-config-migration.yaml",
        "9:7",
        "invalid lxd-profile: contains config value \"migration.incremental.memory\"",
    ),
    rule(
        "rule-many-violations.yaml",
        "12:11",
        "invalid lxd-profile: contains device type \"proxy\"",
    ),
    rule(
        "rule-unknown-device-type.yaml",
        "9:14",
        "invalid lxd-profile: contains device type \"unix-charr\"",
    ),
    rule(
        "rule-machine-runs-it.yaml",
        "9:14",
        "invalid lxd-profile: contains device type \"disk\"",
    ),
    // The controller's own keys, even with force: true.
    case(
        "owner-key.yaml",
        "10:7",
        "spec.lxdProfile.config.user.lxd-mutater.owner: config key \"user.lxd-mutater.owner\" is reserved",
    ),
    case(
        "owner-key-forced.yaml",
        "10:7",
        "spec.lxdProfile.config.user.lxd-mutater.owner: config key \"user.lxd-mutater.owner\" is reserved",
    ),
    case("reserved-key-forced.yaml", "10:7", RESERVED),
    // Values LXD refuses.
    case(
        "lxd-empty-config-key.yaml",
        "8:5",
        "spec.lxdProfile.config: a config key must not be empty",
    ),
    case(
        "lxd-empty-device-name.yaml",
        "8:5",
        "spec.lxdProfile.devices: a device name must not be empty",
    ),
    case(
        "lxd-device-without-properties.yaml",
        "9:7",
        "spec.lxdProfile.devices.kmsg: device \"kmsg\" has no properties",
    ),
    // The rest of the object.
    case(
        "status-unknown-phase.yaml",
        "7:17",
        "status.phase: unknown variant `Exploded`",
    ),
    case(
        "machine-with-host.yaml",
        "6:3",
        "spec.machine: a Machine has no host machine",
    ),
    case(
        "second-document-bad.yaml",
        "12:3",
        "spec.instance: instance name \"i 9\"",
    ),
    Case {
        file: "duplicate-of-good-machine.yaml",
        at: Some("2:1"),
        says: "Machine \"0\" in namespace \"m\" is defined twice: here and at ",
        run: Run::Duplicate,
    },
    // Amplification and depth.
    case(
        "alias-bomb.yaml",
        "7:8",
        "aliases expand to more than a resource file can hold",
    ),
    case(
        "alias-bomb-in-resource.yaml",
        "15:15",
        "aliases expand to more than a resource file can hold",
    ),
    case(
        "alias-scalar-amplification.yaml",
        "18:16",
        "bytes of text once aliases are expanded",
    ),
    case(
        "deep-33-levels.yaml",
        "8:47",
        "nested deeper than 32 levels",
    ),
    case(
        "deep-20k-flow-seq.yaml",
        "7:273",
        "recursion limit exceeded",
    ),
    case(
        "deep-20k-flow-map.yaml",
        "7:134",
        "nested deeper than 32 levels",
    ),
    case(
        "deep-20k-block-seq.yaml",
        "8:65",
        "nested deeper than 32 levels",
    ),
    case(
        "deep-20k-unclosed.yaml",
        "7:273",
        "recursion limit exceeded",
    ),
    // Size.
    whole("ten-mb.yaml", TOO_LARGE),
    whole("eight-gb-sparse.yaml", TOO_LARGE),
    whole("just-over-1mib.yaml", TOO_LARGE),
    // Bytes that are not YAML text.
    whole("non-utf8.yaml", "not UTF-8 text: invalid utf-8 sequence"),
    whole("latin1.yaml", "not UTF-8 text"),
    whole("utf16.yaml", "not UTF-8 text"),
    case("nul-byte.yaml", "6:11", "unexpected character"),
    case("all-nul.yaml", "1:1", "unexpected character"),
];

const API: &str = "lxdmutater.dev/v1alpha1";

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile")
}

/// An Application document of namespace `h` with revision 1 and `rest` under spec.
fn h_app(name: &str, rest: &str) -> String {
    format!(
        "apiVersion: {API}\nkind: Application\nmetadata: {{name: {name}, namespace: h}}\nspec:\n  revision: 1\n{rest}"
    )
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
}

/// The whole corpus in `dir`: the committed files copied, the others made here.
fn corpus(dir: &Path) {
    for entry in std::fs::read_dir(corpus_dir()).expect("tests/fixtures/hostile") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().expect("a file name");
        std::fs::copy(&path, dir.join(name)).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    }
    let deep = 20_000;
    let profile = "  lxdProfile:\n    description: ";
    let text = h_app(
        "deep-20k-flow-seq",
        &format!("{profile}{}{}\n", "[".repeat(deep), "]".repeat(deep)),
    );
    write(dir, "deep-20k-flow-seq.yaml", text.as_bytes());
    let text = h_app(
        "deep-20k-flow-map",
        &format!("{profile}{}1{}\n", "{a: ".repeat(deep), "}".repeat(deep)),
    );
    write(dir, "deep-20k-flow-map.yaml", text.as_bytes());
    let text = h_app(
        "deep-20k-block-seq",
        &format!(
            "  lxdProfile:\n    description:\n      {}x\n",
            "- ".repeat(deep)
        ),
    );
    write(dir, "deep-20k-block-seq.yaml", text.as_bytes());
    let text = h_app(
        "deep-20k-unclosed",
        &format!("{profile}{}\n", "[".repeat(deep)),
    );
    write(dir, "deep-20k-unclosed.yaml", text.as_bytes());
    // 100 kB, named once and used twenty times: 2 MB of scalars from a 100 kB file.
    let uses: String = (0..20).map(|i| format!("      user.k{i}: *s\n")).collect();
    let text = h_app(
        "alias-scalar-amplification",
        &format!(
            "  charm: &s {}\n  lxdProfile:\n    config:\n{uses}",
            "x".repeat(100_000)
        ),
    );
    write(dir, "alias-scalar-amplification.yaml", text.as_bytes());
    // YAML caps implicit keys at 1024 characters.
    let text = h_app(
        "long-implicit-key",
        &format!(
            "  lxdProfile:\n    config:\n      user.{}: v\n",
            "k".repeat(500_000)
        ),
    );
    write(dir, "long-implicit-key.yaml", text.as_bytes());
    // Size: a valid resource under a 10 MB comment, an 8 GB hole, one byte too many.
    let text = h_app("ten-mb", &format!("# {}\n", "x".repeat(10 * 1024 * 1024)));
    write(dir, "ten-mb.yaml", text.as_bytes());
    let sparse = std::fs::File::create(dir.join("eight-gb-sparse.yaml")).expect("create");
    sparse.set_len(8 << 30).expect("an 8 GB sparse file");
    let mut text = h_app("just-over-1mib", "# ").into_bytes();
    text.resize(1024 * 1024, b'x');
    text.push(b'\n');
    write(dir, "just-over-1mib.yaml", &text);
    // Bytes that are not UTF-8 text, and NULs (a file a crash left behind is all NULs).
    let mut text = h_app("non-utf8", "").into_bytes();
    let at = text
        .windows(8)
        .position(|w| w == b"non-utf8")
        .expect("the name")
        + 8;
    text.splice(at..at, [0xff, 0xfe]);
    write(dir, "non-utf8.yaml", &text);
    let text = h_app("caf\u{e9}", "");
    let latin1: Vec<u8> = text.chars().map(|c| c as u8).collect();
    write(dir, "latin1.yaml", &latin1);
    let mut utf16 = vec![0xff, 0xfe];
    utf16.extend(h_app("utf16", "").encode_utf16().flat_map(u16::to_le_bytes));
    write(dir, "utf16.yaml", &utf16);
    write(
        dir,
        "nul-byte.yaml",
        h_app("nul-byte", "  charm: a\0b\n").as_bytes(),
    );
    write(dir, "all-nul.yaml", &[0u8; 4096]);
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lxd-mutater"))
}

/// The good resources: the Application `one` (revision 1) and the Machine `0` on `i0`,
/// in namespace `m`. The file name sorts first.
const GOOD: &str = "apiVersion: lxdmutater.dev/v1alpha1
kind: Application
metadata: {name: one, namespace: m}
spec: {revision: 1, lxdProfile: {config: {security.nesting: \"true\"}}}
---
apiVersion: lxdmutater.dev/v1alpha1
kind: Machine
metadata: {name: \"0\", namespace: m}
spec: {instance: i0, applications: [one]}
";
const GOOD_FILE: &str = "00-good.yaml";
/// What the good Machine's instance ends with.
const ONE: &[&str] = &["default", "juju-m", "juju-m-one-1"];

/// The line a problem is printed on: `file:line:column: ` or `file: `.
fn prefix(path: &Path, at: Option<&str>) -> String {
    match at {
        Some(at) => format!("{}:{at}: ", path.display()),
        None => format!("{}: ", path.display()),
    }
}

#[test]
fn validate_refuses_every_hostile_input_with_its_position_and_never_panics() {
    let dir = tempfile::tempdir().expect("a temp dir");
    corpus(dir.path());
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir.path())
        .expect("the corpus")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let listed: BTreeSet<String> = CORPUS.iter().map(|c| c.file.to_string()).collect();
    assert_eq!(on_disk, listed, "every input has one expectation");
    assert!(CORPUS.len() >= 40, "{} inputs", CORPUS.len());
    let good = tempfile::tempdir().expect("a temp dir");
    std::fs::write(good.path().join(GOOD_FILE), GOOD).expect("the good file");

    let mut failures = Vec::new();
    for case in CORPUS {
        let path = dir.path().join(case.file);
        let mut cmd = bin();
        cmd.arg("validate");
        if case.run == Run::Duplicate {
            cmd.arg(good.path().join(GOOD_FILE));
        }
        let started = std::time::Instant::now();
        let out = cmd.arg(&path).output().expect("lxd-mutater validate");
        let took = started.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let want = prefix(&path, case.at);
        let found = stdout
            .lines()
            .any(|l| l.starts_with(&want) && l[want.len()..].contains(case.says));
        let ok = out.status.code() == Some(1)
            && found
            && !stderr.contains("panicked")
            && stdout
                .lines()
                .all(|l| l.starts_with(&*path.to_string_lossy()) || case.run == Run::Duplicate)
            && took < Duration::from_secs(10);
        if !ok {
            failures.push(format!(
                "{}: exit {:?} in {took:?}, wanted a line `{want}...{}`\nstdout: {stdout}\nstderr: {stderr}",
                case.file,
                out.status.code(),
                case.says
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // All violations of the profile rules are reported, not only the first.
    let path = dir.path().join("rule-many-violations.yaml");
    let out = bin().arg("validate").arg(&path).output().expect("validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let file = path.display();
    assert_eq!(
        lines,
        [
            format!(
                "{file}:9:7: spec.lxdProfile.config.limits.memory: invalid lxd-profile: contains config value \"limits.memory\""
            ),
            format!(
                "{file}:10:7: spec.lxdProfile.config.boot.autostart: invalid lxd-profile: contains config value \"boot.autostart\""
            ),
            format!(
                "{file}:12:11: spec.lxdProfile.devices.p.type: invalid lxd-profile: contains device type \"proxy\""
            ),
        ]
    );

    // The whole corpus at once: one run, every file named, no panic.
    let out = bin()
        .arg("validate")
        .arg(dir.path())
        .output()
        .expect("validate");
    assert_eq!(out.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for case in CORPUS.iter().filter(|c| c.run != Run::Duplicate) {
        let want = prefix(&dir.path().join(case.file), case.at);
        assert!(
            stdout.lines().any(|l| l.starts_with(&want)),
            "{want} in {stdout}"
        );
    }
}

/// The series of the gauge of resource files that do not load: SPEC §8 names it
/// `lxd_mutater_source_files_invalid` (formerly `lxd_mutater_source_errors`).
fn files_invalid(metrics: &str) -> Option<f64> {
    [
        "lxd_mutater_source_files_invalid",
        "lxd_mutater_source_errors",
    ]
    .iter()
    .find(|name| metrics.lines().any(|l| l.starts_with(&format!("{name} "))))
    .map(|name| metric_value(metrics, name))
}

/// Every LXD request the process sent that is not a GET: `(method, code) -> count`.
fn lxd_writes(metrics: &str) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("lxd_mutater_lxd_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        if label("method") != "GET" && value > 0.0 {
            out.insert((label("method"), label("code")), value);
        }
    }
    out
}

/// The peak resident set of a process, in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM");
    kb * 1024
}

/// The profiles of the project, sorted.
fn profile_names(lxd: &TestProject) -> Vec<String> {
    let json = lxd
        .query("GET", "/1.0/profiles", None)
        .expect("the profiles");
    let urls: Vec<String> = serde_json::from_str(&json).expect("a list");
    let mut names: Vec<String> = urls
        .iter()
        .filter_map(|u| u.split('?').next()?.rsplit('/').next())
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

/// A status file of the state directory, as text ("" while there is none).
fn status_file(state: &Path, namespace: &str, name: &str) -> String {
    std::fs::read_to_string(
        state
            .join(namespace)
            .join("machines")
            .join(format!("{name}.yaml")),
    )
    .unwrap_or_default()
}

#[test]
fn hostile_files_beside_a_good_one_cost_no_lxd_write_no_crash_and_little_memory() {
    let lxd = TestProject::new();
    lxd.empty_instance("i0");
    // Named by the hostile duplicate and by the Machine that runs a forbidden profile.
    lxd.empty_instance("i1");
    let res = tempfile::tempdir().expect("a temp dir");
    let state = tempfile::tempdir().expect("a temp dir");
    let logs = tempfile::tempdir().expect("a temp dir");
    corpus(res.path());
    std::fs::write(res.path().join(GOOD_FILE), GOOD).expect("the good file");
    let log = logs.path().join("run.log");
    let args = [
        "--resources",
        &res.path().display().to_string(),
        "--state-dir",
        &state.path().display().to_string(),
        "--resync",
        "1h",
    ]
    .map(String::from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut daemon = Daemon::run(&lxd, &args, &[], Some(&log));
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let show_log = |what: &str| format!("{what}\n--- log ---\n{}", log_text());

    // The good Machine converges.
    wait_until("i0 to converge", Duration::from_secs(30), || {
        lxd.instance_profiles("i0") == ONE
    });
    wait_until("the good Machine Applied", Duration::from_secs(10), || {
        status_file(state.path(), "m", "0").contains("phase: Applied")
    });
    // The Machine that runs a profile Juju's rules forbid: Error in Juju's words.
    wait_until(
        "the Machine running a forbidden profile in Error",
        Duration::from_secs(10),
        || {
            let s = status_file(state.path(), "h", "runs-disk");
            s.contains("phase: Error")
                && s.contains("invalid lxd-profile: contains device type \\\"disk\\\"")
        },
    );

    // Every file that does not load is counted ...
    let refused: Vec<&Case> = CORPUS.iter().filter(|c| c.run == Run::Refused).collect();
    wait_until(
        "the source gauge to count the refused files",
        Duration::from_secs(10),
        || files_invalid(&daemon.metrics()) == Some(refused.len() as f64),
    );
    // ... and named in the log with its position and the reason.
    let text = log_text();
    let mut missing = Vec::new();
    for case in &refused {
        let want = prefix(&res.path().join(case.file), case.at);
        if !text
            .lines()
            .any(|l| l.contains(&want) && l.contains(case.says))
        {
            missing.push(format!("{want}{}", case.says));
        }
    }
    assert!(
        missing.is_empty(),
        "{}",
        show_log(&format!("not in the log: {missing:#?}"))
    );
    let duplicate = res.path().join("duplicate-of-good-machine.yaml");
    assert!(
        text.lines()
            .any(|l| l.contains("defined twice") && l.contains(&*duplicate.to_string_lossy())),
        "{}",
        show_log("the duplicate is not named")
    );

    // The queue drained: what the hostile files caused is all there is.
    wait_until("the work queue to drain", Duration::from_secs(10), || {
        let m = daemon.metrics();
        m.lines()
            .filter(|l| l.starts_with("workqueue_depth{"))
            .all(|l| l.ends_with(" 0"))
    });
    let metrics = daemon.metrics();
    let writes = lxd_writes(&metrics);
    let want: BTreeMap<(String, String), f64> = [
        (("PATCH".to_string(), "200".to_string()), 1.0),
        (("POST".to_string(), "201".to_string()), 2.0),
    ]
    .into();
    assert_eq!(writes, want, "{}", show_log("LXD writes"));
    assert_eq!(lxd.instance_profiles("i1"), ["default"]);
    assert_eq!(
        profile_names(&lxd),
        ONE,
        "no profile for a hostile resource"
    );

    // Alive, healthy, ready, and small, with an 8 GB file in its directory.
    assert!(
        daemon.child.try_wait().expect("try_wait").is_none(),
        "{}",
        show_log("the controller exited")
    );
    assert_eq!(daemon.get("/healthz").0, 200);
    assert_eq!(daemon.get("/readyz").0, 200, "{}", daemon.get("/readyz").1);
    let rss = peak_rss(daemon.child.id());
    assert!(rss < 200 << 20, "peak RSS {} MB", rss >> 20);
    assert!(!log_text().contains("panicked"), "{}", show_log("a panic"));
    eprintln!("peak RSS {} MB", rss >> 20);
}

/// The non-GET requests of `after` that `before` had not counted yet.
fn new_writes(
    before: &BTreeMap<(String, String), f64>,
    after: &BTreeMap<(String, String), f64>,
) -> BTreeMap<(String, String), f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

#[test]
fn a_profile_lxd_refuses_is_reported_in_lxds_words_and_changes_nothing() {
    let lxd = TestProject::new();
    lxd.empty_instance("i0");
    lxd.empty_instance("i1");
    let res = tempfile::tempdir().expect("a temp dir");
    let state = tempfile::tempdir().expect("a temp dir");
    std::fs::write(res.path().join(GOOD_FILE), GOOD).expect("the good file");
    let args = [
        "--resources",
        &res.path().display().to_string(),
        "--state-dir",
        &state.path().display().to_string(),
        "--resync",
        "1h",
    ]
    .map(String::from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::run(&lxd, &args, &[], None);
    wait_until("i0 to converge", Duration::from_secs(30), || {
        lxd.instance_profiles("i0") == ONE
    });
    let before = lxd_writes(&daemon.metrics());

    // Well-formed, within Juju's rules, and a value LXD will never take.
    std::fs::write(
        res.path().join("lxd-refuses.yaml"),
        format!(
            "apiVersion: {API}\nkind: Application\nmetadata: {{name: refused, namespace: m}}\nspec: {{revision: 1, lxdProfile: {{config: {{security.nesting: maybe}}}}}}\n---\napiVersion: {API}\nkind: Machine\nmetadata: {{name: \"1\", namespace: m}}\nspec: {{instance: i1, applications: [refused]}}\n"
        ),
    )
    .expect("a resource file");
    wait_until("Machine 1 in Error", Duration::from_secs(10), || {
        status_file(state.path(), "m", "1").contains("phase: Error")
    });
    let status = status_file(state.path(), "m", "1");
    assert!(
        status.contains(
            r#"message: "cannot upgrade machine's lxd profile: Invalid value for a boolean \"maybe\"""#
        ),
        "{status}"
    );
    // LXD refused the profile (400); nothing was written, the instance was not touched.
    let writes = new_writes(&before, &lxd_writes(&daemon.metrics()));
    assert_eq!(
        writes.keys().collect::<Vec<_>>(),
        [&("POST".to_string(), "400".to_string())],
        "{writes:?}"
    );
    assert_eq!(lxd.instance_profiles("i1"), ["default"]);
    assert_eq!(profile_names(&lxd), ONE);
    assert_eq!(lxd.instance_profiles("i0"), ONE);
}

#[test]
fn a_name_that_validates_is_one_the_controller_can_use() {
    let lxd = TestProject::new();
    for i in ["i0", "i1", "i2"] {
        lxd.empty_instance(i);
    }
    let res = tempfile::tempdir().expect("a temp dir");
    let state = tempfile::tempdir().expect("a temp dir");
    std::fs::write(res.path().join(GOOD_FILE), GOOD).expect("the good file");
    let machine = |name: &str, instance: &str, app: &str| {
        format!(
            "apiVersion: {API}\nkind: Machine\nmetadata: {{name: \"{name}\", namespace: m}}\nspec: {{instance: {instance}, applications: [{app}]}}\n"
        )
    };
    let long_machine = "n".repeat(250);
    let long_app = "a".repeat(250);
    let files = [
        (
            "long-machine-name.yaml",
            machine(&long_machine, "i1", "one"),
            long_machine.clone(),
        ),
        (
            "long-application-name.yaml",
            format!(
                "apiVersion: {API}\nkind: Application\nmetadata: {{name: {long_app}, namespace: m}}\nspec: {{revision: 1, lxdProfile: {{config: {{security.nesting: \"true\"}}}}}}\n---\n{}",
                machine("2", "i2", &long_app)
            ),
            "2".to_string(),
        ),
    ];
    let mut accepted = Vec::new();
    for (file, text, machine) in &files {
        let path = res.path().join(file);
        std::fs::write(&path, text).expect("a resource file");
        let out = bin()
            .arg("validate")
            .arg(res.path().join(GOOD_FILE))
            .arg(&path)
            .output()
            .expect("validate");
        match out.status.code() {
            Some(0) => accepted.push((*file, machine.clone())),
            Some(1) => {}
            other => panic!("{file}: validate exited {other:?}"),
        }
    }
    // What validate accepts, run applies.
    let args = [
        "--resources",
        &res.path().display().to_string(),
        "--state-dir",
        &state.path().display().to_string(),
    ]
    .map(String::from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _daemon = Daemon::run(&lxd, &args, &[], None);
    wait_until("i0 to converge", Duration::from_secs(30), || {
        lxd.instance_profiles("i0") == ONE
    });
    let applied =
        |machine: &str| status_file(state.path(), "m", machine).contains("phase: Applied");
    let all = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(
            "the Machines to be Applied",
            Duration::from_secs(10),
            || accepted.iter().all(|(_, m)| applied(m)),
        )
    }));
    if all.is_err() {
        let not: Vec<String> = accepted
            .iter()
            .filter(|(_, m)| !applied(m))
            .map(|(file, m)| {
                let status = status_file(state.path(), "m", m);
                let message = status
                    .lines()
                    .find(|l| l.trim_start().starts_with("message: \"cannot"))
                    .unwrap_or("no status file");
                format!("{file}: validate accepts it, but its Machine is not Applied: {message}")
            })
            .collect();
        panic!("{not:#?}");
    }
}

#[test]
fn a_refusal_never_shows_library_internals_or_misquotes_the_input() {
    let dir = tempfile::tempdir().expect("a temp dir");
    corpus(dir.path());
    let out = bin()
        .arg("validate")
        .arg(dir.path())
        .output()
        .expect("validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut bad: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            let debug_struct = l.contains(" { ") && l.contains(" }");
            let unbalanced = l.matches('(').count() != l.matches(')').count();
            debug_struct || unbalanced
        })
        .collect();
    bad.extend(
        stdout
            .lines()
            .filter(|l| l.contains("revision-huge.yaml") && l.contains("1000000000000000")),
    );
    assert!(bad.is_empty(), "{bad:#?}");
}

// ---------------------------------------------------------------------------------------
// The Kubernetes source.

const NS: &str = "m";

/// A fake API server on its own runtime, and a folder for its kubeconfig and logs.
struct Cluster {
    api: FakeApiServer,
    dir: tempfile::TempDir,
    // Declared last: dropped after the server's handle.
    rt: tokio::runtime::Runtime,
}

impl Cluster {
    fn new() -> Cluster {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let api = rt.block_on(FakeApiServer::start());
        let dir = tempfile::tempdir().expect("a temp dir");
        api.kubeconfig(dir.path().join("kubeconfig"))
            .expect("writing the kubeconfig");
        Cluster { api, dir, rt }
    }

    fn create(&self, obj: Value) {
        let _guard = self.rt.enter();
        self.api
            .create(obj)
            .unwrap_or_else(|e| panic!("create: {e:?}"));
    }

    fn status(&self, plural: &str, name: &str) -> Value {
        self.api
            .get(API, plural, NS, name)
            .map(|o| o["status"].clone())
            .unwrap_or(Value::Null)
    }

    /// Warning Events with `reason` on the object `name`: their messages.
    fn events(&self, name: &str, reason: &str) -> Vec<String> {
        self.api
            .list("v1", "events", Some(NS))
            .iter()
            .filter(|e| e["involvedObject"]["name"] == name && e["reason"] == reason)
            .filter(|e| e["type"] == "Warning")
            .map(|e| e["message"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

fn object(kind: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": API, "kind": kind,
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    })
}

/// A JSON value nested `depth` arrays deep.
fn nested(depth: usize) -> Value {
    let mut v = json!("x");
    for _ in 0..depth {
        v = Value::Array(vec![v]);
    }
    v
}

/// A hostile object for the Kubernetes source and what it must say.
struct K8sCase {
    kind: &'static str,
    name: &'static str,
    spec: Value,
    /// The field the message names.
    field: &'static str,
}

fn k8s_cases() -> Vec<K8sCase> {
    let k = |kind, name, spec, field| K8sCase {
        kind,
        name,
        spec,
        field,
    };
    vec![
        // Bad names in spec.instance.
        k(
            "Machine",
            "inst-slash",
            json!({"instance": "../i0"}),
            "spec.instance",
        ),
        k(
            "Machine",
            "inst-pct",
            json!({"instance": "i0%2Fsnapshots"}),
            "spec.instance",
        ),
        k(
            "Machine",
            "inst-query",
            json!({"instance": "i0?project=default"}),
            "spec.instance",
        ),
        k(
            "Machine",
            "inst-300",
            json!({"instance": "i".repeat(300)}),
            "spec.instance",
        ),
        k(
            "Machine",
            "inst-number",
            json!({"instance": 12}),
            "spec.instance",
        ),
        // Wrong types.
        k(
            "Machine",
            "apps-string",
            json!({"instance": "i9", "applications": "one"}),
            "spec.applications",
        ),
        k(
            "Machine",
            "inst-object",
            json!({"instance": {"name": "i0"}}),
            "spec.instance",
        ),
        k(
            "Machine",
            "manual-string",
            json!({"instance": "i9", "manual": "yes please"}),
            "spec.manual",
        ),
        k(
            "Machine",
            "life-undead",
            json!({"instance": "i9", "life": "undead"}),
            "spec.life",
        ),
        k(
            "Machine",
            "extra-slash",
            json!({"instance": "i9", "extraProfiles": ["ok", "a/b"]}),
            "spec.extraProfiles[1]",
        ),
        k(
            "Machine",
            "unknown-field",
            json!({"instance": "i9", "applicatons": ["one"]}),
            "spec.applicatons",
        ),
        k(
            "Machine",
            "with-host",
            json!({"machine": "0", "instance": "i9"}),
            "spec.machine",
        ),
        k(
            "Container",
            "no-host",
            json!({"instance": "c9"}),
            "spec.machine",
        ),
        // Applications (no status: an Event says why).
        k(
            "Application",
            "rev-negative",
            json!({"revision": -1}),
            "spec.revision",
        ),
        k(
            "Application",
            "rev-string",
            json!({"revision": "seven"}),
            "spec.revision",
        ),
        k(
            "Application",
            "rev-missing",
            json!({"charm": "x"}),
            "spec: missing field `revision`",
        ),
        k(
            "Application",
            "owner-key",
            json!({"revision": 1, "force": true,
                "lxdProfile": {"config": {"user.lxd-mutater.owner": "lxd-mutater"}}}),
            "spec.lxdProfile.config.user.lxd-mutater.owner",
        ),
        k(
            "Application",
            "config-object",
            json!({"revision": 1, "lxdProfile": {"config": {"security.nesting": {"a": true}}}}),
            "spec.lxdProfile.config.security.nesting",
        ),
        k(
            "Application",
            "empty-device",
            json!({"revision": 1, "lxdProfile": {"devices": {"kmsg": {}}}}),
            "spec.lxdProfile.devices.kmsg",
        ),
    ]
}

/// A controller with `--source kubernetes` on a fresh LXD project (empty instances `i0`
/// and `i1`) and a fake API server holding the good Application `one` and Machine `0`
/// (on `i0`), plus `objects`. Its log is shown when the test fails.
struct K8s {
    lxd: TestProject,
    cluster: Cluster,
    daemon: Daemon,
    log: PathBuf,
}

impl K8s {
    fn start(objects: Vec<Value>) -> K8s {
        let lxd = TestProject::new();
        lxd.empty_instance("i0");
        lxd.empty_instance("i1");
        let cluster = Cluster::new();
        cluster.create(object(
            "Application",
            "one",
            json!({"revision": 1, "lxdProfile": {"config": {"security.nesting": true}}}),
        ));
        cluster.create(object(
            "Machine",
            "0",
            json!({"instance": "i0", "applications": ["one"]}),
        ));
        for o in objects {
            cluster.create(o);
        }
        let log = cluster.dir.path().join("ctl.log");
        let kubeconfig = cluster.dir.path().join("kubeconfig");
        let daemon = Daemon::run(
            &lxd,
            &["--source", "kubernetes", "--resync", "1h"],
            &[("KUBECONFIG", kubeconfig.as_path())],
            Some(&log),
        );
        K8s {
            lxd,
            cluster,
            daemon,
            log,
        }
    }

    fn converged(&self) {
        wait_until("i0 to converge", Duration::from_secs(30), || {
            self.lxd.instance_profiles("i0") == ONE
        });
        wait_until("Machine 0 Applied", Duration::from_secs(10), || {
            self.cluster.status("machines", "0")["phase"] == "Applied"
        });
    }

    /// The LXD writes are the good Machine's, and the controller is alive.
    fn only_the_good_machine_wrote(&mut self) {
        let writes = lxd_writes(&self.daemon.metrics());
        let want: BTreeMap<(String, String), f64> = [
            (("PATCH".to_string(), "200".to_string()), 1.0),
            (("POST".to_string(), "201".to_string()), 2.0),
        ]
        .into();
        assert_eq!(writes, want, "LXD writes");
        assert_eq!(self.lxd.instance_profiles("i1"), ["default"]);
        assert_eq!(profile_names(&self.lxd), ONE);
        assert!(
            self.daemon.child.try_wait().expect("try_wait").is_none(),
            "the controller exited"
        );
        assert_eq!(self.daemon.get("/healthz").0, 200);
    }
}

impl Drop for K8s {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("--- {} (last lines) ---", self.log.display());
            for l in tail.into_iter().rev() {
                eprintln!("{}", short(l));
            }
        }
    }
}

/// What the Error message and the InvalidSpec event of an object that does not load
/// start with.
fn invalid_spec(field: &str) -> String {
    format!("cannot upgrade machine's lxd profile: invalid spec: {field}")
}

fn plural(kind: &str) -> &'static str {
    match kind {
        "Application" => "applications",
        "Machine" => "machines",
        _ => "containers",
    }
}

#[test]
fn hostile_kubernetes_objects_say_why_and_cost_no_lxd_write() {
    let cases = k8s_cases();
    let mut objects: Vec<Value> = cases
        .iter()
        .map(|c| object(c.kind, c.name, c.spec.clone()))
        .collect();
    // Juju's rules: the Application loads, the Machine that runs it says why.
    objects.push(object(
        "Application",
        "mounts-host",
        json!({"revision": 1, "lxdProfile": {
            "devices": {"data": {"type": "disk", "source": "/", "path": "/mnt"}},
            "config": {"limits.cpu": 2}}}),
    ));
    objects.push(object(
        "Machine",
        "runs-disk",
        json!({"instance": "i1", "applications": ["mounts-host"]}),
    ));
    let mut k = K8s::start(objects);
    k.converged();

    let cluster = &k.cluster;
    let mut failures = Vec::new();
    for c in &cases {
        let says = invalid_spec(c.field);
        let told = || {
            !cluster.events(c.name, "InvalidSpec").is_empty()
                && (c.kind == "Application"
                    || cluster.status(plural(c.kind), c.name)["phase"] == "Error")
        };
        let told = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(
                &format!("{} to be told", c.name),
                Duration::from_secs(10),
                told,
            )
        }));
        if told.is_err() {
            failures.push(format!(
                "{} {}: no InvalidSpec Event or Error",
                c.kind, c.name
            ));
            continue;
        }
        let events = cluster.events(c.name, "InvalidSpec");
        if events.len() != 1 || !events[0].starts_with(&says) {
            let events: Vec<String> = events.iter().map(|e| short(e)).collect();
            failures.push(format!(
                "{} {}: events {events:?}, wanted one with {says:?}",
                c.kind, c.name
            ));
        }
        if c.kind != "Application" {
            let status = cluster.status(plural(c.kind), c.name);
            let message = status["message"].as_str().unwrap_or("");
            if !message.starts_with(&says) {
                failures.push(format!(
                    "{} {}: status message {:?}, wanted {says:?}",
                    c.kind,
                    c.name,
                    short(message)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    wait_until(
        "the Machine running a forbidden profile in Error",
        Duration::from_secs(10),
        || cluster.status("machines", "runs-disk")["phase"] == "Error",
    );
    // All violations, sorted (SPEC §4).
    assert_eq!(
        cluster.status("machines", "runs-disk")["message"],
        "cannot upgrade machine's lxd profile: application \"mounts-host\": invalid lxd-profile: contains config value \"limits.cpu\"; invalid lxd-profile: contains device type \"disk\""
    );

    // The broken objects are counted; LXD saw only the good Machine's writes.
    let broken = cases.len() as f64;
    wait_until("the source gauge", Duration::from_secs(10), || {
        files_invalid(&k.daemon.metrics()) == Some(broken)
    });
    k.only_the_good_machine_wrote();
}

/// An Application whose LXD config value is `depth` JSON arrays deep: a real API server
/// stores it (it allows 10000 levels, and the CRD preserves any value there).
fn deep_application(name: &str, depth: usize) -> Value {
    object(
        "Application",
        name,
        json!({"revision": 1, "lxdProfile": {"config": {"security.nesting": nested(depth)}}}),
    )
}

#[test]
fn one_deeply_nested_object_does_not_stop_its_whole_kind_from_loading() {
    let mut k = K8s::start(vec![deep_application("deep", 3_000)]);
    k.converged();
    wait_until(
        "an InvalidSpec event on the deep Application",
        Duration::from_secs(10),
        || !k.cluster.events("deep", "InvalidSpec").is_empty(),
    );
    k.only_the_good_machine_wrote();
}

#[test]
fn an_object_nested_too_deep_is_refused_naming_its_field() {
    let k = K8s::start(vec![deep_application("deep", 100)]);
    k.converged();
    wait_until("an InvalidSpec event", Duration::from_secs(10), || {
        !k.cluster.events("deep", "InvalidSpec").is_empty()
    });
    let events = k.cluster.events("deep", "InvalidSpec");
    assert!(
        events[0].starts_with(&invalid_spec("spec.lxdProfile.config.security.nesting")),
        "{events:?}"
    );
    assert!(!events[0].contains('{'), "{events:?}");
}

/// metav1.Condition caps `message` at 32768 bytes; an API server refuses an object
/// (spec and status together) past about 1.5 MiB.
const MAX_MESSAGE: usize = 32 * 1024;

#[test]
fn a_huge_string_in_a_spec_is_not_echoed_whole_into_status_and_events() {
    let huge = format!("i{}", "x".repeat(512 * 1024));
    let k = K8s::start(vec![object("Machine", "huge", json!({"instance": huge}))]);
    k.converged();
    wait_until("machine huge in Error", Duration::from_secs(10), || {
        k.cluster.status("machines", "huge")["phase"] == "Error"
    });
    let status = k.cluster.status("machines", "huge");
    let message = status["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with(&invalid_spec("spec.instance")),
        "{}",
        short(message)
    );
    assert!(
        message.len() <= MAX_MESSAGE,
        "status.message: {} bytes",
        message.len()
    );
    let size = status.to_string().len();
    assert!(size <= 2 * MAX_MESSAGE + 4096, "status: {size} bytes");
    wait_until("an InvalidSpec event", Duration::from_secs(10), || {
        !k.cluster.events("huge", "InvalidSpec").is_empty()
    });
    for e in k.cluster.events("huge", "InvalidSpec") {
        assert!(e.len() <= MAX_MESSAGE, "event: {} bytes", e.len());
    }
}

/// A message cut to a length that fits an assertion message.
fn short(s: &str) -> String {
    if s.len() > 300 {
        let cut: String = s.chars().take(300).collect();
        format!("{cut}... ({} bytes)", s.len())
    } else {
        s.to_string()
    }
}
