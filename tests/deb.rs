//! The Debian package (`make deb`, `scripts/deb.sh`), checked the way dpkg and lintian see
//! it: its files, its conffiles, its maintainer scripts, its unit, and lintian's verdict.
//!
//! The package is made once per run of this file, by `scripts/deb.sh --no-build` with
//! LXD_MUTATER_DEB_PROFILE=dev: from the debug binary `cargo test` has just built (no
//! release build, which takes minutes on two cores, and no second cargo build at all),
//! into `<target>/debian-dev/`, where it cannot replace a release package of `make deb`.
//! The packaging is the same for both profiles; only the binary differs.
//!
//! Needs cargo-deb, lintian and dpkg-dev: the script installs them when missing (as root,
//! as `make test` runs). A missing tool fails the test; nothing is skipped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const UNIT: &str = "lxd-mutater.service";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_lxd-mutater")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): scripts/deb.sh installs it"))
}

/// `program args`, which must succeed; its standard output.
fn stdout_of(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

struct Package {
    deb: PathBuf,
    /// What scripts/deb.sh printed, lintian's report included.
    said: String,
    /// The package's files, unpacked with `dpkg-deb -x`.
    root: tempfile::TempDir,
}

impl Package {
    fn deb(&self) -> &str {
        self.deb.to_str().expect("a UTF-8 path")
    }

    fn file(&self, path: &str) -> String {
        read(&self.root.path().join(path.trim_start_matches('/')))
    }

    /// A control file (`postinst`, `conffiles`...), from `dpkg-deb -I`.
    fn control(&self, name: &str) -> String {
        stdout_of("dpkg-deb", &["-I", self.deb(), name])
    }
}

/// The package, made on first use by scripts/deb.sh (which also runs lintian and fails
/// on any E: or W: line).
fn package() -> &'static Package {
    static PACKAGE: OnceLock<Package> = OnceLock::new();
    PACKAGE.get_or_init(|| {
        let out = Command::new("bash")
            .args(["scripts/deb.sh", "--no-build"])
            .current_dir(repo())
            .env("LXD_MUTATER_DEB_PROFILE", "dev")
            .output()
            .expect("run bash");
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "scripts/deb.sh failed:\n{said}");
        // The script's last line is the package it made.
        let deb = PathBuf::from(
            text(&out.stdout)
                .lines()
                .last()
                .expect("scripts/deb.sh printed nothing")
                .trim(),
        );
        assert!(deb.is_file(), "no package at {}:\n{said}", deb.display());
        let root = tempfile::tempdir().expect("a temporary directory");
        stdout_of(
            "dpkg-deb",
            &["-x", deb.to_str().unwrap(), root.path().to_str().unwrap()],
        );
        Package { deb, said, root }
    })
}

/// Every path in the package, as `dpkg-deb -c` lists it ("/usr/bin/lxd-mutater"), with its
/// mode string ("-rwxr-xr-x").
fn listing(package: &Package) -> Vec<(String, String)> {
    stdout_of("dpkg-deb", &["-c", package.deb()])
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let mode = fields[0].to_string();
            // A symlink's line ends "path -> target": the path is the field before "->".
            let path = match fields.iter().position(|f| *f == "->") {
                Some(arrow) => fields[arrow - 1],
                None => fields[fields.len() - 1],
            };
            (
                path.trim_start_matches('.')
                    .trim_end_matches('/')
                    .to_string(),
                mode,
            )
        })
        .collect()
}

/// The manual pages the binary writes (lxd-mutater.1, lxd-mutater-run.1, ...).
fn man_pages() -> BTreeSet<String> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    stdout_of(binary(), &["man", dir.path().to_str().unwrap()]);
    let pages: BTreeSet<String> = std::fs::read_dir(dir.path())
        .expect("the pages")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(pages.len() > 2, "{pages:?}");
    pages
}

fn examples() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo().join("examples"))
        .expect("examples/")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    names.sort();
    assert!(!names.is_empty());
    names
}

#[test]
fn the_package_holds_the_binary_unit_settings_completions_man_pages_and_docs() {
    let package = package();
    let files = listing(package);
    let paths: BTreeSet<&str> = files.iter().map(|(path, _)| path.as_str()).collect();
    let mode = |path: &str| {
        files
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, mode)| mode.as_str())
            .unwrap_or_else(|| panic!("{path} is not in the package:\n{paths:#?}"))
    };

    assert_eq!(mode("/usr/bin/lxd-mutater"), "-rwxr-xr-x");
    let mut want = vec![
        format!("/usr/lib/systemd/system/{UNIT}"),
        "/etc/default/lxd-mutater".into(),
        "/etc/lxd-mutater/resources/README".into(),
        "/usr/share/bash-completion/completions/lxd-mutater".into(),
        "/usr/share/zsh/vendor-completions/_lxd-mutater".into(),
        "/usr/share/fish/vendor_completions.d/lxd-mutater.fish".into(),
        "/usr/share/doc/lxd-mutater/copyright".into(),
        "/usr/share/doc/lxd-mutater/changelog.Debian.gz".into(),
        "/usr/share/lintian/overrides/lxd-mutater".into(),
    ];
    want.extend(
        man_pages()
            .iter()
            .map(|page| format!("/usr/share/man/man1/{page}.gz")),
    );
    want.extend(
        examples()
            .iter()
            .map(|name| format!("/usr/share/doc/lxd-mutater/examples/{name}")),
    );
    for path in &want {
        assert_eq!(mode(path), "-rw-r--r--", "{path}");
    }

    // Nothing else is a file of the package, nothing goes to /usr/local, and no resource is
    // active: a fresh install manages nothing.
    let files_only: BTreeSet<&str> = files
        .iter()
        .filter(|(_, mode)| !mode.starts_with('d'))
        .map(|(path, _)| path.as_str())
        .collect();
    let mut expected: BTreeSet<&str> = want.iter().map(String::as_str).collect();
    expected.insert("/usr/bin/lxd-mutater");
    assert_eq!(files_only, expected);
    assert!(!paths.iter().any(|p| p.starts_with("/usr/local")));
    assert!(
        !paths
            .iter()
            .any(|p| p.starts_with("/etc/lxd-mutater/resources/")
                && (p.ends_with(".yaml") || p.ends_with(".yml"))),
        "an active resource in the package: {paths:#?}"
    );

    // The man pages really are gzip files (dpkg-deb -x keeps them as packaged).
    let page = package
        .root
        .path()
        .join("usr/share/man/man1/lxd-mutater.1.gz");
    let head = std::fs::read(&page).expect("the main page");
    assert_eq!(
        &head[..2],
        &[0x1f, 0x8b],
        "{} is not gzipped",
        page.display()
    );
}

#[test]
fn the_control_fields_name_the_version_the_section_and_the_libraries() {
    let package = package();
    let version = stdout_of(binary(), &["--version"]);
    let crate_version = env!("CARGO_PKG_VERSION");
    assert!(version.contains(crate_version), "{version}");
    let field = |name: &str| stdout_of("dpkg-deb", &["-f", package.deb(), name]);
    assert_eq!(field("Package").trim(), "lxd-mutater");
    assert_eq!(field("Version").trim(), format!("{crate_version}-1"));
    assert_eq!(field("Section").trim(), "admin");
    assert!(field("Depends").contains("libc6"), "{}", field("Depends"));
    let file_name = package.deb.file_name().unwrap().to_string_lossy();
    assert!(
        file_name.starts_with(&format!("lxd-mutater_{crate_version}-1_")),
        "{file_name}"
    );
}

#[test]
fn the_settings_and_the_resources_directory_are_conffiles() {
    let package = package();
    let conffiles: BTreeSet<String> = package
        .control("conffiles")
        .lines()
        .map(str::to_string)
        .collect();
    let want: BTreeSet<String> = [
        "/etc/default/lxd-mutater",
        "/etc/lxd-mutater/resources/README",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(conffiles, want);
    // The settings as the repository has them; the README points at the examples.
    assert_eq!(
        package.file("/etc/default/lxd-mutater"),
        read(&repo().join("deploy/systemd/lxd-mutater.default"))
    );
    let readme = package.file("/etc/lxd-mutater/resources/README");
    assert!(readme.contains("/usr/share/doc/lxd-mutater/examples/"));
    for name in examples() {
        assert_eq!(
            package.file(&format!("/usr/share/doc/lxd-mutater/examples/{name}")),
            read(&repo().join("examples").join(&name))
        );
    }
}

#[test]
fn the_packaged_unit_is_the_repositorys_with_the_binary_in_usr_bin() {
    let package = package();
    let packaged = package.file(&format!("/usr/lib/systemd/system/{UNIT}"));
    let exec: Vec<&str> = packaged
        .lines()
        .filter(|l| l.starts_with("ExecStart="))
        .collect();
    assert_eq!(
        exec,
        ["ExecStart=/usr/bin/lxd-mutater run --resources /etc/lxd-mutater/resources"]
    );
    // Apart from its two comment lines on top and ExecStart, the repository's unit as it
    // is: the hardening that tests/manifests.rs checks is what the package ships.
    let body: String = packaged
        .lines()
        .skip(2)
        .map(|l| {
            l.replace(
                "ExecStart=/usr/bin/lxd-mutater ",
                "ExecStart=/usr/local/bin/lxd-mutater ",
            ) + "\n"
        })
        .collect();
    assert_eq!(body, read(&repo().join("deploy/systemd").join(UNIT)));
    assert!(packaged.lines().take(2).all(|l| l.starts_with('#')));
    // The packaged binary is the one that was built, and it runs.
    let installed = package.root.path().join("usr/bin/lxd-mutater");
    assert_eq!(
        stdout_of(installed.to_str().unwrap(), &["--version"]),
        stdout_of(binary(), &["--version"])
    );
}

#[test]
fn the_completions_are_the_binarys() {
    let package = package();
    for (shell, path) in [
        ("bash", "/usr/share/bash-completion/completions/lxd-mutater"),
        ("zsh", "/usr/share/zsh/vendor-completions/_lxd-mutater"),
        (
            "fish",
            "/usr/share/fish/vendor_completions.d/lxd-mutater.fish",
        ),
    ] {
        assert_eq!(
            package.file(path),
            stdout_of(binary(), &["completions", shell]),
            "{path}"
        );
    }
}

#[test]
fn postinst_enables_the_unit_without_starting_it_and_purge_cleans_up() {
    let package = package();
    let postinst = package.control("postinst");
    let prerm = package.control("prerm");
    let postrm = package.control("postrm");
    for (name, script) in [
        ("postinst", &postinst),
        ("prerm", &prerm),
        ("postrm", &postrm),
    ] {
        assert!(script.starts_with("#!/bin/sh\n"), "{name}");
        assert!(
            !script.contains("#DEBHELPER#"),
            "{name}: token left:\n{script}"
        );
        let out = Command::new("sh")
            .args(["-n", "-c", script])
            .output()
            .expect("run sh");
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
    }

    // Enabled on first installation (was-enabled is true for a unit never seen), and an
    // operator's disable kept on upgrade; never started, only restarted on upgrade if it
    // was running.
    assert!(
        postinst.contains(&format!("deb-systemd-helper --quiet was-enabled {UNIT}"))
            && postinst.contains(&format!("deb-systemd-helper enable {UNIT}")),
        "postinst does not enable the unit:\n{postinst}"
    );
    assert!(
        !postinst.contains("deb-systemd-invoke start")
            && !postinst.contains("deb-systemd-invoke restart")
            && !postinst.contains("systemctl start"),
        "postinst starts the unit:\n{postinst}"
    );
    assert!(
        postinst.contains(&format!("deb-systemd-invoke try-restart {UNIT}")),
        "{postinst}"
    );
    // Stopped on removal, not on upgrade.
    assert!(
        prerm.contains("\"$1\" = remove")
            && prerm.contains(&format!("deb-systemd-invoke stop {UNIT}")),
        "{prerm}"
    );
    // Purge: deb-systemd-helper forgets the unit, and the statuses go.
    assert!(
        postrm.contains(&format!("deb-systemd-helper purge {UNIT}")),
        "{postrm}"
    );
    assert!(postrm.contains("rm -rf /var/lib/lxd-mutater"), "{postrm}");
}

#[test]
fn lintian_reports_no_error_and_no_warning_and_every_override_has_its_reason() {
    let package = package();
    let said = &package.said;
    assert!(
        said.contains("deb.sh: lintian found no error and no warning"),
        "{said}"
    );
    let bad: Vec<&str> = said
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .collect();
    assert!(bad.is_empty(), "lintian:\n{}", bad.join("\n"));

    // Overrides are shipped in the package, and each one follows a comment saying why.
    let overrides = package.file("/usr/share/lintian/overrides/lxd-mutater");
    assert_eq!(
        overrides,
        read(&repo().join("deploy/debian/lintian-overrides"))
    );
    let mut reason = false;
    for line in overrides.lines() {
        if line.starts_with('#') {
            reason = true;
        } else if line.trim().is_empty() {
            reason = false;
        } else {
            assert!(reason, "lintian override without a reason: {line}");
        }
    }
}
